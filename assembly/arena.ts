// Layout of the module's own part of the arena (below heap_base()).
// Small scratch areas are memory.data in the modules that use them; the one
// large area (quantized x of the int8 FFNs, 65 KiB) is reserved here just above
// __heap_base instead, so it costs no zero bytes in the .wasm file.

/** Largest d for which int8 FFNs quantize x into XQ (larger d use an exact f32 path). */
export const MAXD_I8: usize = 32768;
/** int16 x values + one f32 scale per 128-column block. */
export const XQ_BYTES: usize = MAXD_I8 * 2 + (MAXD_I8 / 128) * 4;
/** Start of the int8 FFN x area. */
export const XQ: usize = (__heap_base + 15) & ~(<usize>15);
/** First byte the host may use. */
export const HEAP_BASE: usize = (XQ + XQ_BYTES + 15) & ~(<usize>15);
