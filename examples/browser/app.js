// The page: a form, load progress, streamed text and per-token figures. All
// engine work happens in worker.js; this thread only renders messages, with
// the chart redrawn at most once per animation frame.
//
// URL parameters fill the form (model, prompt, n, temp, strategy, memory, threads,
// cacheMax in MB, mode=complete|chat) and `autorun=1` starts at once (in chat
// mode, with the prompt as the first message). `window.__flashlm` holds the
// run's state for scripts and tests; `messages` is the chat so far.

const $ = (id) => document.getElementById(id);
const fmtBytes = (n) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(2)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${Math.round(n)} B`);
const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(ms < 10 ? 2 : 1)} ms`);

const state = (window.__flashlm = { state: 'idle', text: '', tokens: [], notices: [], done: undefined, error: undefined, ready: undefined, messages: [] });

function setState(s) {
  state.state = s;
  document.body.dataset.state = s;
  $('go').disabled = s === 'loading' || s === 'generating';
  $('stop').disabled = !(s === 'loading' || s === 'generating');
}

const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'flashlm' });

// ---------------------------------------------------------------- chart

let drawQueued = false;
function queueDraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => {
    drawQueued = false;
    drawChart();
  });
}

function drawChart() {
  const c = $('chart');
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth || 440;
  const h = Math.round(w * 160 / 440);
  if (c.width !== w * dpr) { c.width = w * dpr; c.height = h * dpr; }
  const g = c.getContext('2d');
  g.setTransform(dpr, 0, 0, dpr, 0, 0);
  g.clearRect(0, 0, w, h);
  const pts = state.tokens.filter((t) => t.stats);
  const pad = { l: 34, r: 38, t: 8, b: 16 };
  const iw = w - pad.l - pad.r;
  const ih = h - pad.t - pad.b;
  g.strokeStyle = '#d9dee7';
  g.strokeRect(pad.l, pad.t, iw, ih);
  if (pts.length === 0) return;
  const maxMs = Math.max(...pts.map((t) => t.stats.ms), 1e-3);
  const maxKb = Math.max(...pts.map((t) => t.stats.bytesRead / 1024), 1e-3);
  const bw = iw / pts.length;
  g.fillStyle = '#2f6fde';
  pts.forEach((t, i) => {
    const bh = (t.stats.ms / maxMs) * ih;
    g.fillRect(pad.l + i * bw + bw * 0.1, pad.t + ih - bh, Math.max(1, bw * 0.8), bh);
  });
  g.strokeStyle = '#e0892b';
  g.lineWidth = 1.5;
  g.beginPath();
  pts.forEach((t, i) => {
    const x = pad.l + (i + 0.5) * bw;
    const y = pad.t + ih - (t.stats.bytesRead / 1024 / maxKb) * ih;
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.stroke();
  g.fillStyle = '#5d6b80';
  g.font = '10px system-ui, sans-serif';
  g.textAlign = 'right';
  g.fillText(maxMs.toFixed(1), pad.l - 4, pad.t + 8);
  g.fillText('0', pad.l - 4, pad.t + ih);
  g.textAlign = 'left';
  g.fillText(maxKb.toFixed(0), pad.l + iw + 4, pad.t + 8);
  g.fillText('token →', pad.l, h - 3);
  g.textAlign = 'right';
  g.fillText(String(pts.length), pad.l + iw, h - 3);
}

// ---------------------------------------------------------------- panel

function renderPanel() {
  const pts = state.tokens.filter((t) => t.stats);
  const n = pts.length;
  $('f-tokens').textContent = String(state.tokens.length);
  if (n === 0) return;
  const sum = (f) => pts.reduce((a, t) => a + f(t), 0);
  const last = pts[n - 1];
  const meanMs = sum((t) => t.stats.ms) / n;
  $('f-ms').textContent = `${fmtMs(last.stats.ms)} (mean ${fmtMs(meanMs)})`;
  // Wall clock between the first and the last token as the page received them.
  const span = state.tokens.length > 1 ? state.tokens[state.tokens.length - 1].at - state.tokens[0].at : 0;
  $('f-tps').textContent = span > 0 ? ((1000 * (state.tokens.length - 1)) / span).toFixed(1) : (1000 / meanMs).toFixed(1);
  $('f-bytes').textContent = `${fmtBytes(last.stats.bytesRead)} (mean ${fmtBytes(sum((t) => t.stats.bytesRead) / n)})`;
  $('f-req').textContent = `${last.stats.requests} (mean ${(sum((t) => t.stats.requests) / n).toFixed(1)})`;
  const lookups = sum((t) => t.stats.cacheLookups);
  $('f-hits').textContent = lookups ? `${sum((t) => t.stats.cacheHits)} of ${lookups} (${((100 * sum((t) => t.stats.cacheHits)) / lookups).toFixed(1)}%)` : 'n/a for this strategy';
  const c = state.counters;
  if (c) {
    $('f-opfs').textContent = `${fmtBytes(c.hitBytes)} / ${fmtBytes(c.networkBytes)}`;
    $('f-net').textContent = `${c.networkReads}${c.enabled ? '' : ' (cache off)'}`;
  }
}

function progress(fraction, text) {
  $('bar-fill').style.width = `${Math.max(0, Math.min(1, fraction)) * 100}%`;
  $('status').textContent = text;
}

function notice(message) {
  state.notices.push(message);
  const li = document.createElement('li');
  li.textContent = message;
  $('notices').append(li);
}

// ---------------------------------------------------------------- messages

worker.onmessage = (ev) => {
  const m = ev.data;
  switch (m.type) {
    case 'phase':
      if (m.phase === 'connecting') progress(0, `Connecting to ${m.url} …`);
      else progress(0, `Loading ${fmtBytes(m.size)} model${m.cache.enabled ? `; ${fmtBytes(m.cache.bytes)} already in OPFS` : '; OPFS cache off'} …`);
      break;
    case 'progress':
      state.counters = m.counters;
      progress(m.bytes / m.size, `Loading: ${fmtBytes(m.bytes)} read (${fmtBytes(m.counters.hitBytes)} from OPFS, ${fmtBytes(m.counters.networkBytes)} from the network)`);
      renderPanel();
      break;
    case 'ready':
      state.ready = m;
      state.counters = m.counters;
      setState('generating');
      // loadMs is null when a chat turn runs on the model kept open from the last turn.
      progress(1, `${m.loadMs === null ? 'Kept open' : `Loaded in ${fmtMs(m.loadMs)}`}: ${m.arch.type} ${m.arch.nLayers}×${m.arch.dModel}, ${m.plan.strategy}${m.plan.window ? ` (window ${m.plan.window})` : ''}, arena ${fmtBytes(m.plan.arenaBytes)}. Generating …`);
      if (m.loadMs !== null) $('f-load').textContent = fmtMs(m.loadMs);
      $('f-threads').textContent = m.threading.fallbackReason ? `${m.threading.threads} (${m.threading.fallbackReason})` : String(m.threading.threads);
      renderPanel();
      break;
    case 'token':
      state.text += m.text;
      m.at = performance.now();
      state.tokens.push(m);
      if (state.counters) {
        state.counters.hitBytes += m.opfs.hitBytes;
        state.counters.networkBytes += m.opfs.networkBytes;
        state.counters.networkReads += m.opfs.networkReads;
      }
      if (chatMode()) lastBubble().textContent = state.text;
      else $('text').textContent = state.text;
      renderPanel();
      queueDraw();
      break;
    case 'done':
      state.done = m;
      state.counters = m.counters;
      state.text = m.text;
      if (chatMode()) {
        state.messages.push({ role: 'assistant', content: m.text });
        lastBubble().textContent = m.text;
      } else $('text').textContent = m.text;
      renderPanel();
      queueDraw();
      // In chat, the model kept the conversation's KV cache: only the new turn was computed.
      const reused = chatMode() && m.timings ? ` Reused ${m.timings.reusedTokens} of ${m.timings.promptTokens} prompt tokens from the last turn.` : '';
      progress(1, `Done: ${m.tokens} tokens in ${fmtMs(m.genMs)} (${((1000 * m.tokens) / m.genMs).toFixed(1)} tokens/s); ${fmtBytes(m.counters.hitBytes)} read from OPFS, ${fmtBytes(m.counters.networkBytes)} in ${m.counters.networkReads} network reads.${reused}`);
      setState('done');
      break;
    case 'notice':
      notice(m.message);
      break;
    case 'cleared':
      progress(0, 'OPFS cache cleared.');
      break;
    case 'error':
      state.error = m.message;
      if (chatMode() && state.messages.at(-1)?.role === 'user') {
        // The turn failed: take the message back into the box, so the conversation stays as the model saw it.
        $('prompt').value = state.messages.pop().content;
        $('transcript').lastChild?.remove();
        $('transcript').lastChild?.remove();
      }
      progress(0, `Error: ${m.message}`);
      setState('error');
      break;
  }
};
worker.onerror = (e) => {
  state.error = e.message || 'worker failed to start';
  progress(0, `Error: ${state.error}`);
  setState('error');
};

const chatMode = () => $('mode').value === 'chat';
const lastBubble = () => $('transcript').lastElementChild;

function bubble(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  $('transcript').append(div);
}

/** Shows the form and output for the mode; leaving chat ends the session (the worker frees its model). */
function applyMode() {
  const chat = chatMode();
  $('prompt-label').textContent = chat ? 'Message' : 'Prompt';
  $('go').textContent = chat ? 'Send' : 'Generate';
  $('new-chat').hidden = !chat;
  $('transcript').hidden = !chat;
  $('output').hidden = chat;
  if (!chat) newChat();
}

function newChat() {
  state.messages = [];
  $('transcript').replaceChildren();
  worker.postMessage({ type: 'end-chat' });
}

function start() {
  const url = $('url').value.trim();
  if (!url) return;
  const chat = chatMode();
  if (chat) {
    const text = $('prompt').value.trim();
    if (!text) return;
    state.messages.push({ role: 'user', content: text });
    bubble('user', text);
    bubble('assistant', '');
    $('prompt').value = '';
  }
  state.text = '';
  state.tokens = [];
  state.done = undefined;
  state.error = undefined;
  state.counters = undefined;
  $('text').textContent = '';
  $('prompt-echo').textContent = $('prompt').value;
  for (const id of ['f-ms', 'f-tps', 'f-bytes', 'f-req', 'f-hits', 'f-opfs', 'f-net', 'f-load']) $(id).textContent = '–';
  queueDraw();
  setState('loading');
  const mb = Number($('cacheMax').value);
  worker.postMessage({
    type: chat ? 'chat' : 'generate',
    url,
    base: location.href,
    ...(chat ? { messages: state.messages } : { prompt: $('prompt').value }),
    maxTokens: Number($('tokens').value),
    temperature: Number($('temp').value),
    strategy: $('strategy').value,
    memory: $('memory').value.trim() || undefined,
    threads: Number($('threads').value) || undefined,
    cache: { enabled: mb > 0, maxBytes: mb * 1024 * 1024 },
  });
}

$('form').addEventListener('submit', (e) => {
  e.preventDefault();
  start();
});
$('stop').addEventListener('click', () => worker.postMessage({ type: 'abort' }));
$('clear').addEventListener('click', () => worker.postMessage({ type: 'clear-cache' }));
$('new-chat').addEventListener('click', newChat);
$('mode').addEventListener('change', applyMode);

$('isolation').textContent = self.crossOriginIsolated ? 'cross-origin isolated' : 'not cross-origin isolated (serve with flashlm host)';

const q = new URLSearchParams(location.search);
for (const [param, id] of [['model', 'url'], ['prompt', 'prompt'], ['n', 'tokens'], ['temp', 'temp'], ['strategy', 'strategy'], ['memory', 'memory'], ['threads', 'threads'], ['cacheMax', 'cacheMax'], ['mode', 'mode']]) {
  if (q.has(param)) $(id).value = q.get(param);
}
applyMode();
queueDraw();
if (q.get('autorun') === '1') start();
