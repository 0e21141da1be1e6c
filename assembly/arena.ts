// Layout of the module's own part of the arena (below heap_base()), and the
// per-instance scratch areas of the kernels.
//
// Every mutable scratch area the kernels use (quantized / scaled x, the row-group
// accumulators, the FFN batch and down-queue buffers, the cache histogram, the
// xxh64 result slot, an FFN range's partial sum) lives in one "thread scratch"
// region of SCRATCH_BYTES. Its address is held in per-instance wasm globals (globals are never shared
// between instances), so several instances of the threads build on one shared
// memory each work in their own region: a worker calls thread_init(ptr) with a
// host-allocated region of thread_scratch_bytes() bytes. Without thread_init an
// instance uses the default region reserved here, just above __heap_base (it
// costs no zero bytes in the .wasm file) — the single-threaded build never
// calls thread_init.

/** Largest d for which int8 FFNs quantize x into XQ (larger d use an exact f32 path). */
export const MAXD_I8: usize = 32768;
/** int16 x values + one f32 scale per 128-column block. */
export const XQ_BYTES: usize = MAXD_I8 * 2 + (MAXD_I8 / 128) * 4;

/** Columns per chunk of the f16 dots (gemv.ts F16_CHUNK): XK holds one chunk of scaled x. */
export const XK_FLOATS: usize = 256;
/** Neurons per FFN batch (ffn.ts NB; the threads split at its multiples): HB holds the up and gate dots of a batch. */
export const FFN_NB: usize = 64;
/** Neuron ranges whose down sums an FFN adds in a fixed order (ffn.ts "neuron ranges"): the threads take ranges. */
export const FFN_RANGES: usize = 8;
/** Neurons per batch of the gated FFN's up dots (gated.ts GB). */
export const GATED_GB: usize = 64;

// offsets inside a scratch region (all 16-byte aligned)
const O_XQ: usize = 0;
const O_ACC: usize = (O_XQ + XQ_BYTES + 15) & ~(<usize>15); // 8 x f32x4
const O_XK: usize = O_ACC + 8 * 16;
const O_HB: usize = O_XK + XK_FLOATS * 4; // 2 x NB f32
const O_QP: usize = O_HB + FFN_NB * 4 * 2; // 4 u32
const O_QA: usize = O_QP + 16; // 4 f32
const O_QS: usize = O_QA + 16; // 4 u32
const O_UPS: usize = O_QS + 16; // GB f32
const O_HIST: usize = O_UPS + GATED_GB * 4; // 32 u32
const O_SLOT: usize = O_HIST + 32 * 4; // 8 bytes
const O_PT: usize = O_SLOT + 16; // MAXD_I8 f32
/** Bytes of one instance's scratch region (a multiple of 64). */
export const SCRATCH_BYTES: usize = (O_PT + MAXD_I8 * 4 + 63) & ~(<usize>63);

/** The default region: just above the static data. */
const DEFAULT_SCRATCH: usize = (__heap_base + 63) & ~(<usize>63);
/** First byte the host may use. */
export const HEAP_BASE: usize = DEFAULT_SCRATCH + SCRATCH_BYTES;

/** int8 FFNs' quantized x (and the f16 kernels' scaled x): XQ_BYTES. */
export let XQ: usize = DEFAULT_SCRATCH + O_XQ;
/** gemv.ts: accumulators (8 f32x4) of the current row group. */
export let ACC: usize = DEFAULT_SCRATCH + O_ACC;
/** gemv.ts: scaled x of one f16 chunk when cols > MAXD_F16X. */
export let XK: usize = DEFAULT_SCRATCH + O_XK;
/** ffn.ts: up / gate dots of the current batch (2 x NB f32). */
export let HB: usize = DEFAULT_SCRATCH + O_HB;
/** ffn.ts: down-pass queue, pointers and coefficients. */
export let QP: usize = DEFAULT_SCRATCH + O_QP;
export let QA: usize = DEFAULT_SCRATCH + O_QA;
/** ffn.ts: down-pass queue, q8 scale pointers. */
export let QS: usize = DEFAULT_SCRATCH + O_QS;
/** gated.ts: up dots of a batch. */
export let UPS: usize = DEFAULT_SCRATCH + O_UPS;
/** cache.ts: histogram of the LRU candidates' ages. */
export let HIST: usize = DEFAULT_SCRATCH + O_HIST;
/** xxh64.ts: xxh64_slot(). */
export let SLOT: usize = DEFAULT_SCRATCH + O_SLOT;
/** ffn.ts, q4.ts: one neuron range's partial down sum (d <= MAXD_I8 f32). */
export let PT: usize = DEFAULT_SCRATCH + O_PT;

function set_scratch(base: usize): void {
  XQ = base + O_XQ;
  ACC = base + O_ACC;
  XK = base + O_XK;
  HB = base + O_HB;
  QP = base + O_QP;
  QA = base + O_QA;
  QS = base + O_QS;
  UPS = base + O_UPS;
  HIST = base + O_HIST;
  SLOT = base + O_SLOT;
  PT = base + O_PT;
}

/**
 * Points this instance's scratch at `base` (16-byte aligned, thread_scratch_bytes()
 * bytes in the arena, used by no other instance); 0 restores the default region.
 */
export function thread_init(base: usize): void {
  set_scratch(base ? base : DEFAULT_SCRATCH);
}

/** Bytes of the region thread_init takes. */
export function thread_scratch_bytes(): usize {
  return SCRATCH_BYTES;
}

/** This instance's scratch region (the default one unless thread_init moved it). */
export function thread_scratch(): usize {
  return XQ - O_XQ;
}
