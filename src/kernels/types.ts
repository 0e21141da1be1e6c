/**
 * The WebAssembly kernels' exports (assembly/index.ts). Every argument is a
 * byte offset into the shared arena (`ptr`) or a count; all vectors are f32
 * unless a name says otherwise. Kernels never allocate: the host lays out the
 * arena. A `0` pointer for an optional input (bias, hOut) means "none".
 *
 * FFN neuron records (see docs/FORMAT.md): each neuron has `nParts` parts
 * (relu: up, down; swiglu: gate, up, down). A part is `d` values of the dtype,
 * then (int8) one f32 scale or (q8, at the 4-aligned offset after the values)
 * ceil(d / 32) f32 group scales, then (only when the file has FFN biases) one
 * f32 bias slot (meaningful on the up part), padded to 16 bytes: `partBytes`.
 * Part p of neuron i lives at `partPtr_p + i * stride`. Bundled files have
 * stride = nParts * partBytes; split files have stride = partBytes.
 */
export interface Kernels {
  readonly memory: WebAssembly.Memory;
  /** First arena byte the host may use (after the module's static data). */
  heap_base(): number;

  // ---- dense matvec: out[r] = W[r,:] . x (+ bias[r]); W row-major [rows][cols] ----
  matvec_f32(out: number, W: number, x: number, bias: number, rows: number, cols: number): void;
  /** W holds IEEE binary16 bits. */
  matvec_f16(out: number, W: number, x: number, bias: number, rows: number, cols: number): void;
  /** W int8 [rows][cols], `scales` f32 [rows]; `scratch` has matvec_i8_scratch_bytes(cols) bytes. */
  matvec_i8(out: number, W: number, scales: number, x: number, bias: number, rows: number, cols: number, scratch: number): void;
  /**
   * W int8 [rows][cols] with one f32 scale per group of 32 columns: `scales` f32
   * [rows][ceil(cols / 32)]; `scratch` has matvec_i8_scratch_bytes(cols) bytes.
   */
  matvec_q8(out: number, W: number, scales: number, x: number, bias: number, rows: number, cols: number, scratch: number): void;
  matvec_i8_scratch_bytes(cols: number): number;
  /**
   * 1: every f16 weight the kernels will read was checked finite (f16_special),
   * so the f16 dots skip their per-weight inf/NaN detection (same bits, faster);
   * a word in the arena, seen by every thread. 0 (the default): detect.
   */
  f16_finite_set(on: number): void;
  f16_finite(): number;
  /** 1 if any of `rows` rows of `cols` f16 values (row r at p + r * stride bytes) is inf or NaN, else 0. */
  f16_special(p: number, stride: number, rows: number, cols: number): number;

  // ---- dequantization (bit-exact with src/kernels/quant.ts) ----
  dequant_f16(dst: number, src: number, n: number): void;
  /** dst[i] = fround(q[i] * scale) */
  dequant_i8(dst: number, src: number, n: number, scale: number): void;
  /** dst[i] = fround(q[i] * scales[floor(i / 32)]) */
  dequant_q8(dst: number, src: number, scales: number, n: number): void;
  /** dst[i] = src[i] as f16 bits, round to nearest even (f32ToF16Bits): rows of an f16 KV cache. */
  encode_f16(dst: number, src: number, n: number): void;

  // ---- norms ----
  /** out = (x - mean) / sqrt(var + eps) * weight + bias (bias may be 0) */
  layernorm(out: number, x: number, weight: number, bias: number, n: number, eps: number): void;
  /** out = x / sqrt(mean(x^2) + eps) * weight */
  rmsnorm(out: number, x: number, weight: number, n: number, eps: number): void;

  // ---- rotary embeddings, in place on nHeads*headDim values; cos/sin: headDim/2 f32 for this position ----
  /** pairs (x[2i], x[2i+1]) within each head (llama2.c) */
  rope_interleaved(vec: number, nHeads: number, headDim: number, cos: number, sin: number): void;
  /** pairs (x[i], x[i + headDim/2]) within each head (Hugging Face rotate_half) */
  rope_half(vec: number, nHeads: number, headDim: number, cos: number, sin: number): void;

  /**
   * Causal attention for one query position over nPos cached positions.
   * q [nHeads*headDim]; kCache/vCache [nPos][nKvHeads*headDim]; head h uses kv head
   * h / (nHeads/nKvHeads). scores = q.k * scale, softmax, out = sum p*v.
   * `scratch` holds nPos f32. kvF16: 1 when the cache rows are f16 (encode_f16), 0 for f32.
   * headBytes 0: that position-major layout; else head-major: kv head g's nPos rows of
   * headDim values at kCache + g*headBytes (vCache likewise), one stream per head.
   */
  attention(out: number, q: number, kCache: number, vCache: number, nHeads: number, nKvHeads: number, headDim: number, nPos: number, scale: number, scratch: number, kvF16: number, headBytes: number): void;

  // ---- elementwise ----
  softmax(x: number, n: number): void;
  relu(x: number, n: number): void;
  silu(x: number, n: number): void;
  /** out = silu(gate) * up */
  swiglu(out: number, gate: number, up: number, n: number): void;
  /** out = a + b */
  add(out: number, a: number, b: number, n: number): void;
  /** x *= s */
  scale(x: number, n: number, s: number): void;

  // ---- sampling ----
  argmax(x: number, n: number): number;
  /** x = softmax(x * invTemp), in place */
  softmax_temp(x: number, n: number, invTemp: number): void;

  // ---- FFN over neuron records (dense: all neurons; sparse: the cache's compact slots) ----
  /**
   * out[d] = sum_i relu(up_i . x + b_i) * down_i over n neurons; b_i read from the
   * up part's bias slot when hasBias. hOut (optional) receives the n activations.
   */
  ffn_relu_f32(out: number, x: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, hOut: number): void;
  ffn_relu_f16(out: number, x: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, hOut: number): void;
  ffn_relu_i8(out: number, x: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, hOut: number): void;
  ffn_relu_q8(out: number, x: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, hOut: number): void;
  /**
   * out[d] = sum_i act(gate_i . x, up_i . x) * down_i, the gated activation
   * (afn, athr) = ACT_* code and FATReLU threshold (GatedActivation below):
   * silu(g)·u, relu(g)·u, (g > athr ? g : 0)·u, relu(g)·relu(u).
   */
  ffn_swiglu_f32(out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hOut: number, afn: number, athr: number): void;
  ffn_swiglu_f16(out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hOut: number, afn: number, athr: number): void;
  ffn_swiglu_i8(out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hOut: number, afn: number, athr: number): void;
  ffn_swiglu_q8(out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hOut: number, afn: number, athr: number): void;
  /**
   * Whether the f32, f16, int8 and q8 FFN kernels touch each next batch's records
   * before computing (1) or not (0, the default): the same output bits either
   * way, a speed that depends on the CPU (src/engine/ffn.ts chooseFfnTouch).
   * Kept in the arena, so every instance on a shared one follows it.
   */
  ffn_touch_set(on: number): void;
  ffn_touch(): number;

  // ---- threads (src/kernels/pool.ts): where this instance keeps its mutable scratch ----
  /** Moves this instance's scratch to `base` (thread_scratch_bytes() bytes, 0 = the default region below heap_base). */
  thread_init(base: number): void;
  thread_scratch_bytes(): number;
  /** Address of this instance's scratch region. */
  thread_scratch(): number;

  // ---- batched prompt processing (assembly/batch.ts): T tokens through the same weights ----
  // Token t's input row is at x + t*ldx, its output row at out + t*ldo (bytes);
  // each token's result is bit-identical to the one-token kernel's.
  /** Scratch bytes for any batched call with up to T tokens and up to `cols` columns (FFN: d). */
  batch_scratch_bytes(T: number, cols: number): number;
  /** out[t] = W x_t (+ bias) for T tokens: matvec_f32 of each. */
  matmul_f32(out: number, ldo: number, W: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): void;
  matmul_f16(out: number, ldo: number, W: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): void;
  matmul_i8(out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): void;
  /** q8 W with group `scales` f32 [rows][ceil(cols / 32)]: matvec_q8 of each token. */
  matmul_q8(out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): void;
  /** q4 W with f16 group `scales` [rows][ceil(cols / 32)]: matvec_q4 of each token. */
  matmul_q4(out: number, ldo: number, W: number, scales: number, x: number, ldx: number, bias: number, T: number, rows: number, cols: number, scratch: number): void;
  /** ffn_relu_* for T tokens over resident records; `H` holds T x n f32 (the activations). */
  ffn_relu_f32_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number): void;
  ffn_relu_f16_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number): void;
  ffn_relu_i8_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number): void;
  ffn_relu_q8_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number): void;
  ffn_relu_q4_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, H: number, scratch: number): void;
  /** ffn_swiglu_* for T tokens over resident records; `H` holds T x n f32. */
  ffn_swiglu_f32_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, H: number, scratch: number, afn: number, athr: number): void;
  ffn_swiglu_f16_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, H: number, scratch: number, afn: number, athr: number): void;
  ffn_swiglu_i8_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, H: number, scratch: number, afn: number, athr: number): void;
  ffn_swiglu_q8_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, H: number, scratch: number, afn: number, athr: number): void;
  ffn_swiglu_q4_batch(out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, down: number, stride: number, H: number, scratch: number, afn: number, athr: number): void;

  // ---- the gated FFN of a resident model in the rows layout (assembly/rows.ts; src/engine/ffn.ts rowsLayout) ----
  // [gate | up] records `stride` bytes apart, the down matrix D [d][n] (dtype t: 0 f32, 1 f16, 2 int8,
  // 3 q8), its column scales S (int8: f32 [n]; q8: f32 [ceil(d / 32)][n]); int8 and q8 need d, n <= 32768.
  /** out[d] = FFN(x); h (n f32) gets the activations. */
  ffn_rows(t: number, out: number, x: number, d: number, n: number, gate: number, up: number, stride: number, D: number, S: number, h: number, afn: number, athr: number): void;
  /** ffn_rows for T tokens (rows ldx / ldo bytes apart), each bit-identical to ffn_rows on it; H: T x n f32 (int8: left scaled), scratch: batch_scratch_bytes(T, max(d, n)). */
  ffn_rows_batch(t: number, out: number, ldo: number, x: number, ldx: number, T: number, d: number, n: number, gate: number, up: number, stride: number, D: number, S: number, H: number, scratch: number, afn: number, athr: number): void;

  // ---- FFN over scattered records (sparse path: cache slots or staging) ----
  /**
   * As ffn_relu_*, for n neurons whose part pointers are listed: `ptrs` holds
   * u32 [n][2] = (up, down) part addresses per neuron. hOut[j] gets neuron j's activation.
   */
  ffn_relu_f32_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hasBias: number, hOut: number): void;
  ffn_relu_f16_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hasBias: number, hOut: number): void;
  ffn_relu_i8_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hasBias: number, hOut: number): void;
  ffn_relu_q8_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hasBias: number, hOut: number): void;
  /** As ffn_swiglu_*, `ptrs` u32 [n][3] = (gate, up, down) per neuron. */
  ffn_swiglu_f32_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hOut: number, afn: number, athr: number): void;
  ffn_swiglu_f16_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hOut: number, afn: number, athr: number): void;
  ffn_swiglu_i8_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hOut: number, afn: number, athr: number): void;
  ffn_swiglu_q8_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hOut: number, afn: number, athr: number): void;

  // ---- sliding-window neuron cache (PAPER.md "Windowing" + "DRAM management"), one per layer ----
  /** Bytes of the per-layer state block (header fields + counters) the host reserves (128). */
  cache_state_bytes(): number;
  /**
   * Initialises a layer's cache: `capacity` slots of `recordBytes` (nParts parts of
   * partBytes each, bundled order) at `slots`; slotNeuron i32[capacity],
   * neuronSlot i32[neurons] (set to -1), mask u32[capacity]; `window` = k tokens
   * (clamped to 0..32). Window k keeps a neuron for the k tokens ending with its
   * latest activity (k = 1: reuse from the previous token only); 0 = no reuse:
   * everything is evicted before each token, so every active neuron is new.
   * Calling it again on the same state resets the cache and its counters.
   */
  cache_init(state: number, capacity: number, neurons: number, window: number, nParts: number, partBytes: number, slots: number, slotNeuron: number, neuronSlot: number, mask: number): void;
  /**
   * One token: `active` i32[nActive] (ascending distinct neuron ids) is this token's set.
   * 1. Ages every used slot's activity mask: (mask << 1) & (2^window - 1).
   * 2. Active cached neurons are hits (mask |= 1); the others are new.
   * 3. Slots whose mask became 0 (no activity within the window) are evicted.
   * 4. If the kept + new neurons exceed capacity, least-recently-used slots among
   *    those not active this token are evicted too: the largest count of trailing
   *    zeros of the mask (oldest latest activity) first, ties by lowest slot index.
   * 5. The first new neurons (smallest ids) that fit are placed: into the evicted
   *    slots (ascending), then appended at the end; the rest are "overflow" (not cached
   *    this token; cache_overflow(state) gives their count).
   * 6. Evicted slots no new neuron took are filled by moving the last used slot's
   *    record into them (PAPER.md), so used slots stay compact [0, used). Filling
   *    holes with new neurons first means records only move when the cache shrinks.
   * Writes `newOut` i32: the placed new neurons (ascending), then the overflow ones;
   * `ptrsOut` u32[nActive][nParts]: part addresses of each active neuron's slot, in
   * the order of `active` (0 for overflow neurons: the host points them at staging).
   * The placed neurons' slots are not contiguous: the host copies their records in
   * with cache_install (which reads newOut: keep it unchanged until then).
   * Returns the number of placed new neurons. Test spec: test/helpers/window-model.ts.
   */
  cache_step(state: number, active: number, nActive: number, newOut: number, ptrsOut: number): number;
  /**
   * Copies the records of the placed new neurons newOut[first .. first+count) of the
   * last cache_step into their slots: `src` u32[count][nParts] = staging address of
   * each part (split files: scattered parts; bundled: consecutive parts, merged into
   * one copy). Entries past the placed ones (overflow) are ignored.
   */
  cache_install(state: number, first: number, count: number, src: number): void;
  /**
   * Index in newOut of this token's first placed neuron: always 0 (placed neurons
   * come first in newOut), so `cache_install(state, cache_first_new(state) + j, ...)` works.
   */
  cache_first_new(state: number): number;
  cache_overflow(state: number): number;
  cache_used(state: number): number;
  /**
   * Cumulative counters since init (plain numbers, exact to 2^53): hits, placed new
   * neurons (misses = placed; hits + misses + overflows = all active), window
   * evictions (step 3, and everything for window 0), LRU evictions (step 4),
   * overflow neurons.
   */
  cache_hits(state: number): number;
  cache_misses(state: number): number;
  cache_evictions(state: number): number;
  cache_lru_evictions(state: number): number;
  cache_overflows(state: number): number;

  // ---- predictor training (assembly/train.ts; `flashlm calibrate`), f32 row-major ----
  /** C[M,N] = A[M,K] · B[N,K]ᵀ, plus the old C when accumulate != 0. */
  mm_nt(C: number, A: number, B: number, M: number, N: number, K: number, accumulate: number): void;
  /** out[cols,rows] = src[rows,cols]ᵀ (no overlap). */
  transpose(out: number, src: number, rows: number, cols: number): void;
  /**
   * Class-weighted logistic loss, in place: z = L[t,j] + bias[j] (bias may be 0),
   * y = labels[t,j] (u8 0/1); loss = posWeight·y·softplus(-z) + (1-y)·softplus(z);
   * L becomes dloss/dz · scale. Returns the summed unscaled loss.
   */
  bce_grad(L: number, labels: number, bias: number, T: number, N: number, posWeight: number, scale: number): number;
  /** out[j] = Σ_t X[t,j] over X [T,N] (added to out when accumulate != 0). */
  colsum(out: number, X: number, T: number, N: number, accumulate: number): void;
  /** Adam over n parameters; bc1 = 1 - b1^t, bc2 = 1 - b2^t. Updates w, m, v in place. */
  adam_step(w: number, g: number, m: number, v: number, n: number, lr: number, b1: number, b2: number, eps: number, bc1: number, bc2: number): void;
  /**
   * Adds the logits z = L[t,j] + bias[j] of positives (labels[t,j] = 1) and negatives
   * to f64 histograms of `bins` bins: bin = clamp(floor((z - lo) · invW), 0, bins-1).
   */
  logit_histogram(L: number, labels: number, bias: number, T: number, N: number, lo: number, invW: number, bins: number, posHist: number, negHist: number): void;

  // ---- thresholded gate sparsity for gated FFNs (assembly/gated.ts) ----
  /**
   * out[i] = the gate half of activation afn (silu, relu, fatrelu at athr; drelu: relu)
   * of gate_i · x for n neurons whose gate parts sit at gate + i·stride
   * (part records: int8 values are followed by their f32 scale, q8 values by their
   * group scales; d <= 32768 for int8 and q8).
   */
  gate_act_f32(out: number, x: number, d: number, n: number, gate: number, stride: number, afn: number, athr: number): void;
  gate_act_f16(out: number, x: number, d: number, n: number, gate: number, stride: number, afn: number, athr: number): void;
  gate_act_i8(out: number, x: number, d: number, n: number, gate: number, stride: number, afn: number, athr: number): void;
  gate_act_q8(out: number, x: number, d: number, n: number, gate: number, stride: number, afn: number, athr: number): void;
  /**
   * out[d] = Σ_j act[j] · (up_j · x) · down_j for n neurons whose (up, down) part
   * addresses are listed at ptrs (u32 [n][2]); act[j] = gate_act_* of listed
   * neuron j (dReLU, afn 3: relu(up_j · x) in place of up_j · x). hOut (0 = none) receives the n activations.
   */
  ffn_gated_f32_ptrs(out: number, x: number, d: number, ptrs: number, n: number, act: number, hOut: number, afn: number, athr: number): void;
  ffn_gated_f16_ptrs(out: number, x: number, d: number, ptrs: number, n: number, act: number, hOut: number, afn: number, athr: number): void;
  ffn_gated_i8_ptrs(out: number, x: number, d: number, ptrs: number, n: number, act: number, hOut: number, afn: number, athr: number): void;
  ffn_gated_q8_ptrs(out: number, x: number, d: number, ptrs: number, n: number, act: number, hOut: number, afn: number, athr: number): void;
  /** Largest d the int8 and q8 gated kernels take (32768). */
  gated_i8_max_d(): number;

  // ---- 4-bit weights (assembly/q4.ts, docs/FORMAT.md §7.2 q4) ----
  // A q4 row of n values: ceil(n/32) groups of 16 bytes (byte j of group g: value
  // 32g+j in the low nibble, 32g+16+j in the high one, 4-bit two's complement),
  // f16 scales per group. Records: values, f16 scales at 16*ceil(d/32), bias slot
  // 4-aligned after them. No batched q4 kernels: the engine runs q4 token by token.
  /** q4 W [rows][16*ceil(cols/32)] bytes, `scales` f16 [rows][ceil(cols/32)]; scratch: matvec_i8_scratch_bytes(cols). */
  matvec_q4(out: number, W: number, scales: number, x: number, bias: number, rows: number, cols: number, scratch: number): void;
  /** dst[i] = q[i] * scale of its group (exact). */
  dequant_q4(dst: number, src: number, scales: number, n: number): void;
  ffn_relu_q4(out: number, x: number, d: number, n: number, up: number, down: number, stride: number, hasBias: number, hOut: number): void;
  ffn_swiglu_q4(out: number, x: number, d: number, n: number, gate: number, up: number, down: number, stride: number, hOut: number, afn: number, athr: number): void;
  ffn_relu_q4_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hasBias: number, hOut: number): void;
  ffn_swiglu_q4_ptrs(out: number, x: number, d: number, ptrs: number, n: number, hOut: number, afn: number, athr: number): void;
  /** As gate_act_q8 (d <= 32768). */
  gate_act_q4(out: number, x: number, d: number, n: number, gate: number, stride: number, afn: number, athr: number): void;
  /** As ffn_gated_q8_ptrs (d <= 32768). */
  ffn_gated_q4_ptrs(out: number, x: number, d: number, ptrs: number, n: number, act: number, hOut: number, afn: number, athr: number): void;

  // ---- integrity hashing in place (assembly/xxh64.ts; see src/format/hash.ts ArenaHasher) ----
  /**
   * XXH64 (the reference algorithm, as xxhash-wasm's h64Raw) of the `len` bytes
   * at `ptr`, any alignment, with the u64 seed `seedHi·2^32 + seedLo` (the .flm
   * integrity hash is seed 0). The result is written as a u64 little-endian to
   * `out` (any alignment; may overlap the input): a u64 return would cross to
   * JS as a BigInt, so the host reads two u32 halves instead and allocates nothing.
   */
  xxh64(ptr: number, len: number, seedLo: number, seedHi: number, out: number): void;
  /** An 8-byte slot in the module's static area (below heap_base), for xxh64's `out`. */
  xxh64_slot(): number;

  /** 1 in the relaxed-SIMD builds (wasm/flashlm.relaxed.wasm, flashlm.mt.relaxed.wasm: fused multiply-adds), 0 in the plain SIMD ones. */
  simd_relaxed(): number;
}
