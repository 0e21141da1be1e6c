import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbortedError, SourceError } from '../src/errors.js';
import { backoffMs, contradicts, formatRange, ifRangeOf, parseContentRange, type HttpOptions, type RetryEvent } from '../src/source/http-common.js';
import { NodeHttpSource, nodeHttpOpener } from '../src/source/http-node.js';
import { HTTP_HINTS, HttpSource, httpOpener } from '../src/source/http.js';
import type { Source } from '../src/source/types.js';
import { startNginx, type Nginx } from './helpers/nginx.js';
import { patternBytes, startScripted, type ScriptedOptions, type ScriptedServer } from './helpers/scripted-server.js';
import { rng } from './helpers/synthetic.js';

type Opened = Source & { inMemory: boolean };
const kinds: { kind: string; open: (url: string, o?: HttpOptions) => Promise<Opened> }[] = [
  { kind: 'fetch', open: (url, o) => HttpSource.open(url, o) },
  { kind: 'undici', open: (url, o) => NodeHttpSource.open(url, o) },
];

/** Retries fast enough for tests. */
const FAST: HttpOptions = { retryBaseMs: 2, retryMaxMs: 20 };

async function withSource<S extends Source, T>(src: S, fn: (s: S) => Promise<T>): Promise<T> {
  try {
    return await fn(src);
  } finally {
    await src.close();
  }
}

async function withScripted<T>(o: ScriptedOptions, fn: (srv: ScriptedServer) => Promise<T>): Promise<T> {
  const srv = await startScripted(o);
  try {
    return await fn(srv);
  } finally {
    await srv.stop();
  }
}

const eq = (t: ExecutionContext, got: Uint8Array, want: Uint8Array, what: string) => t.true(Buffer.compare(Buffer.from(got), Buffer.from(want)) === 0, what);

// ---------------------------------------------------------------- protocol pieces

test('parseContentRange: forms, sizes past 4 GiB and 2^53, malformed values', (t) => {
  t.deepEqual(parseContentRange('bytes 0-0/1234'), { start: 0, end: 0, size: 1234 });
  t.deepEqual(parseContentRange('bytes 5368709243-5368779242/6442450944'), { start: 5368709243, end: 5368779242, size: 6442450944 });
  t.deepEqual(parseContentRange('bytes 4294967295-4294967296/*'), { start: 4294967295, end: 4294967296 });
  t.deepEqual(parseContentRange('bytes */0'), { size: 0 });
  t.deepEqual(parseContentRange(' BYTES 1-2/3 '), { start: 1, end: 2, size: 3 });
  t.deepEqual(parseContentRange('bytes 0-9007199254740990/9007199254740991'), { start: 0, end: 9007199254740990, size: 2 ** 53 - 1 });
  for (const bad of [undefined, '', 'bytes 0-0', 'bytes 2-1/5', 'bytes 0-5/5', 'bytes */*', 'items 0-1/2', 'bytes 0-1/9007199254740993', 'bytes -1-2/3', 'bytes 0-1/2, 3-4/5', 'bytes 1.5-2/3']) {
    t.is(parseContentRange(bad), undefined, String(bad));
  }
  t.is(formatRange(5 * 2 ** 30 + 123, 6 * 2 ** 30 - 1), 'bytes=5368709243-6442450943');
  t.throws(() => formatRange(2 ** 53, 2 ** 53 + 2), { instanceOf: SourceError });
});

test('validators: If-Range prefers a strong ETag, never a weak one; changes are detected weakly', (t) => {
  t.is(ifRangeOf({ etag: '"a"', lastModified: 'Mon, 01 Jan 2024 00:00:00 GMT' }), '"a"');
  t.is(ifRangeOf({ etag: 'W/"a"', lastModified: 'Mon, 01 Jan 2024 00:00:00 GMT' }), 'Mon, 01 Jan 2024 00:00:00 GMT');
  t.is(ifRangeOf({ etag: 'W/"a"' }), undefined);
  t.is(ifRangeOf({}), undefined);
  t.is(contradicts({ etag: '"a"' }, { etag: 'W/"a"' }), undefined);
  t.regex(contradicts({ etag: '"a"' }, { etag: '"b"' })!, /ETag "a" -> "b"/);
  t.is(contradicts({ etag: '"a"' }, {}), undefined);
  t.regex(contradicts({ lastModified: 'x' }, { lastModified: 'y' })!, /Last-Modified/);
});

test('backoff: doubles per retry, capped, jitter within [half, full]', (t) => {
  t.is(backoffMs(0, 100, 5000, () => 0), 50);
  t.is(backoffMs(0, 100, 5000, () => 1), 100);
  t.is(backoffMs(3, 100, 5000, () => 1), 800);
  t.is(backoffMs(10, 100, 5000, () => 1), 5000);
  t.is(backoffMs(10, 100, 5000, () => 0), 2500);
});

// ---------------------------------------------------------------- nginx

let nginxStart: Promise<{ nginx: Nginx; root: string; data: Uint8Array }> | undefined;
const DATA_SIZE = 3 * 1024 * 1024 + 333;

/** nginx serving a temp dir, started on first use: a missing nginx fails these tests (with the apt-get line), not the rest. */
function nginx() {
  nginxStart ??= (async () => {
    const root = await mkdtemp(join(tmpdir(), 'flashlm-www-'));
    await chmod(root, 0o755); // the worker runs as nobody when the tests run as root
    const data = randomBytes(DATA_SIZE);
    await writeFile(join(root, 'data.bin'), data);
    await writeFile(join(root, 'empty.bin'), new Uint8Array(0));
    try {
      return { nginx: await startNginx({ root }), root, data };
    } catch (e) {
      await rm(root, { recursive: true, force: true });
      throw e;
    }
  })();
  return nginxStart;
}

test.after.always(async () => {
  if (!nginxStart) return;
  const n = await nginxStart.catch(() => undefined);
  if (!n) return;
  await n.nginx.stop();
  await rm(n.root, { recursive: true, force: true });
});

for (const { kind, open } of kinds) {
  test(`${kind} + nginx: size, identity (ETag), hints, random reads byte for byte`, async (t) => {
    const { nginx: ng, data } = await nginx();
    await withSource(await open(ng.url('data.bin')), async (s) => {
      t.is(s.size, DATA_SIZE);
      t.regex(s.identity, new RegExp(`^http:${DATA_SIZE}:etag:"[0-9a-f]+-[0-9a-f]+"$`));
      t.is(s.alignment, 1);
      t.is(s.hints!.mergeGap, HTTP_HINTS.mergeGap);
      t.is(s.hints!.maxRead, HTTP_HINTS.maxRead);
      const r = rng(kind === 'fetch' ? 1 : 2);
      const ranges: [number, number][] = [
        [0, 1],
        [0, DATA_SIZE],
        [DATA_SIZE - 1, 1],
        [DATA_SIZE - 70_000, 70_000],
      ];
      for (let i = 0; i < 150; i++) {
        const off = Math.floor(r() * DATA_SIZE);
        ranges.push([off, Math.min(DATA_SIZE - off, 1 + Math.floor(r() * (i % 10 === 0 ? 1_000_000 : 50_000)))]);
      }
      for (let i = 0; i < ranges.length; i += 8) {
        const batch = ranges.slice(i, i + 8);
        const outs = batch.map(([, len]) => new Uint8Array(len));
        await Promise.all(batch.map(([off], j) => s.read(off, outs[j]!)));
        batch.forEach(([off, len], j) => eq(t, outs[j]!, data.subarray(off, off + len), `[${off}, +${len})`));
      }
      // into a view of WebAssembly memory at an odd offset (how the arena hands out buffers)
      const mem = new Uint8Array(new WebAssembly.Memory({ initial: 2 }).buffer, 12345, 40_000);
      await s.read(777_777, mem);
      eq(t, mem, data.subarray(777_777, 817_777), 'read into wasm memory');
      await s.read(5, new Uint8Array(0));
      const e = await t.throwsAsync(s.read(DATA_SIZE - 10, new Uint8Array(11)), { instanceOf: SourceError });
      t.regex(e!.message, /outside the \d+-byte file/);
    });
  });

  test(`${kind} + nginx: a file replaced on the server is reported as changed, never mixed`, async (t) => {
    const { nginx: ng, root } = await nginx();
    const name = `changing-${kind}.bin`;
    const v1 = randomBytes(200_000);
    await writeFile(join(root, name), v1);
    await withSource(await open(ng.url(name), FAST), async (s) => {
      const into = new Uint8Array(1000);
      await s.read(1000, into);
      eq(t, into, v1.subarray(1000, 2000), 'v1');
      await writeFile(join(root, name), randomBytes(200_000)); // same size, new mtime (nginx ETag: mtime-size)
      const future = new Date(Date.now() + 3600_000);
      await utimes(join(root, name), future, future);
      const e = await t.throwsAsync(s.read(1000, into), { instanceOf: SourceError });
      t.regex(e!.message, /file changed on the server/);
    });
  });

  test(`${kind} + nginx: empty file, missing file (404, not retried)`, async (t) => {
    const { nginx: ng } = await nginx();
    await withSource(await open(ng.url('empty.bin')), async (s) => {
      t.is(s.size, 0);
      await s.read(0, new Uint8Array(0));
    });
    const started = Date.now();
    const e = await t.throwsAsync(open(ng.url('missing.bin'), { retryBaseMs: 1000 }), { instanceOf: SourceError });
    t.regex(e!.message, /HTTP 404/);
    t.true(Date.now() - started < 900, 'a 404 is not retried');
  });
}

test('nginx with limit_rate serves correct bytes through both sources', async (t) => {
  const { root, data } = await nginx();
  const slow = await startNginx({ root, limitRate: '50m' });
  try {
    for (const { open } of kinds) {
      await withSource(await open(slow.url('data.bin')), async (s) => {
        const into = new Uint8Array(300_000);
        await s.read(1_000_000, into);
        eq(t, into, data.subarray(1_000_000, 1_300_000), 'bytes');
      });
    }
  } finally {
    await slow.stop();
  }
});

// ---------------------------------------------------------------- scripted server

const SIZE = 500_000;
const want = (off: number, len: number) => patternBytes(off, len);

for (const { kind, open } of kinds) {
  test(`${kind}: open sends Range bytes=0-0, pins the ETag, reads send If-Range and the caller's headers`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v1"', lastModified: 'Mon, 01 Jan 2024 00:00:00 GMT' }, async (srv) => {
      await withSource(await open(srv.url, { headers: { Authorization: 'Bearer xyz' } }), async (s) => {
        t.is(s.size, SIZE);
        t.is(s.identity, `http:${SIZE}:etag:"v1"`);
        const into = new Uint8Array(12345);
        await s.read(100_000, into);
        eq(t, into, want(100_000, 12345), 'bytes');
        t.is(srv.requests.length, 2);
        t.is(srv.requests[0]!.range, 'bytes=0-0');
        t.is(srv.requests[0]!.ifRange, undefined);
        t.is(srv.requests[1]!.range, 'bytes=100000-112344');
        t.is(srv.requests[1]!.ifRange, '"v1"');
        t.is(srv.requests[1]!.headers.authorization, 'Bearer xyz');
        // (Node's fetch repeats it: "identity, identity")
        t.regex(String(srv.requests[1]!.headers['accept-encoding']), /^identity(, identity)*$/);
      });
    });
  });

  test(`${kind}: weak ETag -> If-Range uses Last-Modified; no validator at all -> no If-Range, identity says unvalidated`, async (t) => {
    await withScripted({ size: SIZE, etag: 'W/"w1"', lastModified: 'Tue, 02 Jan 2024 00:00:00 GMT' }, async (srv) => {
      await withSource(await open(srv.url), async (s) => {
        await s.read(0, new Uint8Array(10));
        t.is(srv.requests[1]!.ifRange, 'Tue, 02 Jan 2024 00:00:00 GMT');
      });
    });
    await withScripted({ size: SIZE }, async (srv) => {
      await withSource(await open(srv.url), async (s) => {
        t.is(s.identity, `http:${SIZE}:unvalidated`);
        const into = new Uint8Array(10);
        await s.read(7, into);
        eq(t, into, want(7, 10), 'bytes');
        t.is(srv.requests[1]!.ifRange, undefined);
      });
    });
  });

  test(`${kind}: a server that ignores Range serves a small file from memory, with one request`, async (t) => {
    await withScripted({ size: 100_000, etag: '"s"', fault: () => ({ ignoreRange: true }) }, async (srv) => {
      await withSource(await open(srv.url), async (s) => {
        t.is(s.size, 100_000);
        t.true(s.inMemory);
        for (const [off, len] of [[0, 10], [99_990, 10], [5000, 50_000]] as const) {
          const into = new Uint8Array(len);
          await s.read(off, into);
          eq(t, into, want(off, len), `[${off}, +${len})`);
        }
        t.is(srv.requests.length, 1);
      });
    });
  });

  test(`${kind}: a server that ignores Range on a large file is an error naming it`, async (t) => {
    await withScripted({ size: 5000, etag: '"s"', fault: () => ({ ignoreRange: true }) }, async (srv) => {
      const e = await t.throwsAsync(open(srv.url, { smallFileBytes: 4096 }), { instanceOf: SourceError });
      t.regex(e!.message, /ignores Range/);
    });
    // Honoured at open, ignored later (same ETag): the read fails the same way, or falls back to memory if small.
    await withScripted({ size: 5000, etag: '"s"', fault: (n) => (n >= 2 ? { ignoreRange: true } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, { ...FAST, smallFileBytes: 4096 }), async (s) => {
        const e = await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: SourceError });
        t.regex(e!.message, /ignored the Range request/);
        t.is(srv.requests.length, 2, 'not retried');
      });
      await withSource(await open(srv.url, { ...FAST }), async (s) => {
        const into = new Uint8Array(100);
        await s.read(4900, into);
        eq(t, into, want(4900, 100), 'small file kept in memory after a 200');
        t.true(s.inMemory);
      });
    });
  });

  test(`${kind}: a connection dropped mid-body is retried, resuming where the bytes stopped`, async (t) => {
    const drops = new Set([2, 3]);
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (drops.has(n) ? { drop: 70_000 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const into = new Uint8Array(300_000);
        await s.read(150_000, into);
        eq(t, into, want(150_000, 300_000), 'bytes after two drops');
        t.deepEqual(
          srv.requests.slice(1).map((r) => r.range),
          ['bytes=150000-449999', 'bytes=220000-449999', 'bytes=290000-449999'],
        );
      });
    });
  });

  test(`${kind}: 503, 429 and 408 are retried, then the read succeeds`, async (t) => {
    const faults: Record<number, { status: number; headers?: Record<string, string> }> = {
      1: { status: 503 },
      2: { status: 429, headers: { 'retry-after': '0' } },
      4: { status: 503 },
      5: { status: 408 },
      6: { status: 502 },
    };
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => faults[n] }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        t.is(s.size, SIZE);
        const into = new Uint8Array(1000);
        await s.read(400_000, into);
        eq(t, into, want(400_000, 1000), 'bytes');
        t.is(srv.requests.length, 7);
      });
    });
  });

  test(`${kind}: 500 forever fails after the retries, within a bounded time`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 ? { status: 500 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, { retries: 3, retryBaseMs: 20, retryMaxMs: 100 }), async (s) => {
        const started = Date.now();
        const e = await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: SourceError });
        const took = Date.now() - started;
        t.regex(e!.message, /failed after 4 attempts: HTTP 500/);
        t.is(srv.requests.length, 1 + 4);
        t.true(took >= 10 + 20 + 40 - 5, `backed off (${took} ms)`);
        t.true(took < 8000, `bounded (${took} ms)`);
      });
    });
  });

  test(`${kind}: 4xx other than 408/429 is not retried`, async (t) => {
    for (const status of [403, 404, 410]) {
      await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { status } : undefined) }, async (srv) => {
        await withSource(await open(srv.url, FAST), async (s) => {
          const e = await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: SourceError });
          t.regex(e!.message, new RegExp(`HTTP ${status}`));
          t.is(srv.requests.length, 2);
        });
      });
    }
  });

  test(`${kind}: ETag changed after open -> "file changed", via If-Range (200) and via a 206 carrying a new ETag`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v1"' }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        await s.read(0, new Uint8Array(10));
        srv.etag = '"v2"';
        const e = await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: SourceError });
        t.regex(e!.message, /file changed on the server .*ETag "v1" -> "v2"/);
        t.is(srv.requests.length, 3, 'not retried');
      });
    });
    // A weak ETag is not sent as If-Range (no Last-Modified either), so the server answers 206: the ETag on it gives the change away.
    await withScripted({ size: SIZE, etag: 'W/"v1"' }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        srv.etag = 'W/"v2"';
        const e = await t.throwsAsync(s.read(10, new Uint8Array(10)), { instanceOf: SourceError });
        t.regex(e!.message, /changed/);
        t.is(srv.requests[1]!.ifRange, undefined);
      });
    });
    // The size in Content-Range changed.
    await withScripted({ size: SIZE, etag: '"v1"', fault: (n) => (n === 2 ? { contentRange: `bytes 0-9/${SIZE + 1}` } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const e = await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: SourceError });
        t.regex(e!.message, /changed.*size/);
      });
    });
  });

  test(`${kind}: a wrong Content-Range, a body longer than it, a 206 without it are errors (not retried)`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { contentRange: `bytes 1001-2000/${SIZE}` } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const e = await t.throwsAsync(s.read(1000, new Uint8Array(1000)), { instanceOf: SourceError });
        t.regex(e!.message, /Content-Range "bytes 1001-2000\/500000" for Range: bytes=1000-1999/);
        t.is(srv.requests.length, 2);
      });
    });
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { extraByte: true } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const e = await t.throwsAsync(s.read(1000, new Uint8Array(1000)), { instanceOf: SourceError });
        t.regex(e!.message, /body longer/);
      });
    });
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { status: 206 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const e = await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: SourceError });
        t.regex(e!.message, /without Content-Range/);
      });
    });
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 1 ? { contentRange: `bytes 0-0/*` } : undefined) }, async (srv) => {
      const e = await t.throwsAsync(open(srv.url, FAST), { instanceOf: SourceError });
      t.regex(e!.message, /cannot learn the size/);
    });
  });

  test(`${kind}: a stalled answer times out and is retried; a slow but steady one does not`, async (t) => {
    // Margins are wide so that a loaded 2-core machine cannot blur stalled and slow.
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { stallMs: 10_000 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, { ...FAST, timeoutMs: 1000 }), async (s) => {
        const started = Date.now();
        const into = new Uint8Array(5000);
        await s.read(123, into);
        eq(t, into, want(123, 5000), 'bytes');
        t.true(Date.now() - started < 6000);
        t.is(srv.requests.length, 3);
      });
    });
    // 8 pieces 250 ms apart: ~1.75 s in all, longer than the timeout, but never 1 s without bytes.
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { trickleMs: 250 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, { ...FAST, timeoutMs: 1000 }), async (s) => {
        const into = new Uint8Array(80_000);
        await s.read(1000, into);
        eq(t, into, want(1000, 80_000), 'bytes');
        t.is(srv.requests.length, 2, 'the idle timer restarts with every chunk');
      });
    });
  });

  test(`${kind}: a trickling server fails the low-speed limit (retries said through onRetry); a deadline bounds a stall; gzip is named`, async (t) => {
    // 8 pieces 400 ms apart (~25 KB/s) against a 100 KB/s limit over 300 ms windows: every attempt fails.
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 ? { trickleMs: 400 } : undefined) }, async (srv) => {
      const events: RetryEvent[] = [];
      await withSource(await open(srv.url, { ...FAST, retries: 1, lowSpeedLimit: 100_000, lowSpeedTimeMs: 300, onRetry: (e) => events.push(e) }), async (s) => {
        const e = await t.throwsAsync(s.read(1000, new Uint8Array(80_000)), { instanceOf: SourceError });
        t.regex(e!.message, /failed after 2 attempts: slower than 100000 bytes\/s/);
        t.is(events.length, 1);
        t.like(events[0], { retry: 1, retries: 1, what: 'read [1000, +80000)' });
        t.regex(events[0]!.reason, /slower than/);
      });
    });
    // A stalled answer with a long idle timeout: the deadline ends the read, not the timeout.
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 ? { stallMs: 20_000 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, { ...FAST, timeoutMs: 15_000, deadlineMs: 800 }), async (s) => {
        const started = Date.now();
        const e = await t.throwsAsync(s.read(0, new Uint8Array(1000)), { instanceOf: SourceError });
        t.regex(e!.message, /gave up after [\d.]+ s \(deadline 0.8 s\)/);
        t.true(Date.now() - started < 10_000, 'well before the idle timeout');
      });
    });
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 ? { gzip: true } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const e = await t.throwsAsync(s.read(0, new Uint8Array(5000)), { instanceOf: SourceError });
        t.regex(e!.message, /Content-Encoding: gzip/);
      });
    });
  });

  test(`${kind}: a body that ends early but cleanly is retried for the rest`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 2 ? { short: 4000 } : undefined) }, async (srv) => {
      await withSource(await open(srv.url, FAST), async (s) => {
        const into = new Uint8Array(10_000);
        await s.read(20_000, into);
        eq(t, into, want(20_000, 10_000), 'bytes');
        t.deepEqual(
          srv.requests.slice(1).map((r) => r.range),
          ['bytes=20000-29999', 'bytes=24000-29999'],
        );
      });
    });
  });

  test(`${kind}: an empty file (416 bytes */0 at open)`, async (t) => {
    await withScripted({ size: 0, etag: '"e"' }, async (srv) => {
      await withSource(await open(srv.url), async (s) => {
        t.is(s.size, 0);
        t.false(s.inMemory);
        await s.read(0, new Uint8Array(0));
        await t.throwsAsync(s.read(0, new Uint8Array(1)), { instanceOf: SourceError });
      });
    });
  });

  test(`${kind}: the caller's signal aborts a read waiting between retries`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 ? { status: 503 } : undefined) }, async (srv) => {
      const ctl = new AbortController();
      await withSource(await open(srv.url, { signal: ctl.signal, retryBaseMs: 10_000, retryMaxMs: 10_000 }), async (s) => {
        setTimeout(() => ctl.abort(), 100);
        const started = Date.now();
        const e = await t.throwsAsync(s.read(0, new Uint8Array(10)));
        t.true(e instanceof AbortedError, String(e));
        t.true(Date.now() - started < 2000);
        await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: AbortedError });
      });
    });
    // ... and one waiting for a body that does not come.
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 ? { stallMs: 5000 } : undefined) }, async (srv) => {
      const ctl = new AbortController();
      await withSource(await open(srv.url, { signal: ctl.signal }), async (s) => {
        setTimeout(() => ctl.abort(), 100);
        const started = Date.now();
        await t.throwsAsync(s.read(0, new Uint8Array(10)), { instanceOf: AbortedError });
        t.true(Date.now() - started < 2000);
      });
    });
  });

  test(`${kind}: many reads in flight share the caller's signal without piling listeners on it`, async (t) => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(`${w.name}: ${w.message}`);
    process.on('warning', onWarning);
    try {
      await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n >= 2 && n <= 31 ? { status: 503 } : undefined) }, async (srv) => {
        const ctl = new AbortController();
        await withSource(await open(srv.url, { ...FAST, signal: ctl.signal }), async (s) => {
          const outs = Array.from({ length: 30 }, () => new Uint8Array(1000));
          await Promise.all(outs.map((o, i) => s.read(i * 10_000, o)));
          outs.forEach((o, i) => eq(t, o, want(i * 10_000, 1000), `read ${i}`));
        });
      });
      await new Promise((r) => setTimeout(r, 50));
      t.deepEqual(warnings.filter((w) => /listener/i.test(w)), []);
    } finally {
      process.off('warning', onWarning);
    }
  });

  test(`${kind}: invalid options and URLs are SourceErrors before any request`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v"' }, async (srv) => {
      await t.throwsAsync(open(srv.url, { hints: { parallel: 0 } }), { instanceOf: SourceError, message: /hints.parallel/ });
      await t.throwsAsync(open(srv.url, { retries: -1 }), { instanceOf: SourceError, message: /retries/ });
      await t.throwsAsync(open('not a url'), { instanceOf: SourceError, message: /not a valid URL/ });
      await t.throwsAsync(open('ftp://127.0.0.1/x'), { instanceOf: SourceError, message: /not an http\(s\) URL/ });
      t.is(srv.requests.length, 0);
      await withSource(await open(srv.url, { hints: { mergeGap: 0 } }), async (s) => {
        t.deepEqual(s.hints, { ...s.hints, mergeGap: 0 });
      });
    });
  });

  test(`${kind}: offsets past 4 GiB on a server claiming 6 GiB`, async (t) => {
    const size = 6 * 2 ** 30;
    await withScripted({ size, etag: '"big"' }, async (srv) => {
      await withSource(await open(srv.url), async (s) => {
        t.is(s.size, size);
        const cases: [number, number][] = [
          [5 * 2 ** 30 + 123, 70_000],
          [2 ** 32 - 1000, 3000],
          [size - 4096, 4096],
        ];
        for (const [off, len] of cases) {
          const into = new Uint8Array(len);
          await s.read(off, into);
          eq(t, into, want(off, len), `[${off}, +${len})`);
        }
        t.deepEqual(
          srv.requests.slice(1).map((r) => r.range),
          ['bytes=5368709243-5368779242', 'bytes=4294966296-4294969295', `bytes=${size - 4096}-${size - 1}`],
        );
        await t.throwsAsync(s.read(size - 1, new Uint8Array(2)), { instanceOf: SourceError });
      });
    });
  });

  test(`${kind}: redirects are followed`, async (t) => {
    await withScripted({ size: SIZE, etag: '"v"', fault: (n) => (n === 1 ? { status: 302, headers: { location: '/elsewhere/model.flm?sig=1' } } : undefined) }, async (srv) => {
      await withSource(await open(srv.url), async (s) => {
        t.is(s.size, SIZE);
        const into = new Uint8Array(100);
        await s.read(50, into);
        eq(t, into, want(50, 100), 'bytes');
      });
    });
  });
  test(`${kind}: a redirect target is pinned for the next reads, without the Authorization header; when it expires the URL is asked again`, async (t) => {
    let sig = 1;
    await withScripted({ size: SIZE, etag: '"v"', fault: (_n, r) => (r.url === `/signed/model.flm?sig=${sig}` ? undefined : { status: 403 }) }, async (cdn) => {
      const cdnBase = new URL(cdn.url).origin;
      await withScripted({ size: SIZE, etag: '"v"', fault: () => ({ status: 302, headers: { location: `${cdnBase}/signed/model.flm?sig=${sig}` } }) }, async (origin) => {
        await withSource(await open(origin.url, { ...FAST, headers: { authorization: 'Bearer secret' } }), async (s) => {
          const into = new Uint8Array(1000);
          await s.read(3000, into);
          eq(t, into, want(3000, 1000), 'bytes via the redirect target');
          t.is(origin.requests.length, 1, 'the second request went straight to the target');
          t.is(cdn.requests.length, 2);
          t.is(origin.requests[0]!.headers.authorization, 'Bearer secret');
          t.true(cdn.requests.every((r) => r.headers.authorization === undefined), 'no credentials to another origin');
          sig = 2; // the signature expires: the target answers 403
          await s.read(5000, into);
          eq(t, into, want(5000, 1000), 'bytes via the new target');
          t.is(origin.requests.length, 2);
          t.deepEqual(
            cdn.requests.map((r) => r.url),
            ['/signed/model.flm?sig=1', '/signed/model.flm?sig=1', '/signed/model.flm?sig=1', '/signed/model.flm?sig=2'],
          );
        });
      });
    });
  });
}

test('fetch source: an injected fetch is used', async (t) => {
  await withScripted({ size: SIZE, etag: '"v"' }, async (srv) => {
    let calls = 0;
    const f: typeof fetch = (input, init) => {
      calls++;
      return fetch(input, init);
    };
    await withSource(await HttpSource.open(srv.url, { fetch: f }), async (s) => {
      await s.read(0, new Uint8Array(10));
      t.is(calls, 2);
    });
  });
});

test('undici source: connections bound the parallelism hint', async (t) => {
  await withScripted({ size: SIZE, etag: '"v"' }, async (srv) => {
    await withSource(await NodeHttpSource.open(srv.url, { connections: 3 }), async (s) => {
      t.is(s.hints!.parallel, 3);
      const outs = Array.from({ length: 12 }, () => new Uint8Array(20_000));
      await Promise.all(outs.map((o, i) => s.read(i * 30_000, o)));
      outs.forEach((o, i) => eq(t, o, want(i * 30_000, 20_000), `read ${i}`));
    });
  });
});

test('openers: http(s) strings and URLs only', async (t) => {
  t.is(await httpOpener('ftp://example.com/x', {}), undefined);
  t.is(await httpOpener('model.flm', {}), undefined);
  t.is(await nodeHttpOpener(new URL('file:///tmp/x'), {}), undefined);
  await withScripted({ size: SIZE, etag: '"v"' }, async (srv) => {
    const a = await httpOpener(srv.url, {});
    t.true(a instanceof HttpSource);
    await a!.close();
    const b = await nodeHttpOpener(new URL(srv.url), {});
    t.true(b instanceof NodeHttpSource);
    await b!.close();
  });
});
