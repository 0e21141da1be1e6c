// flashlm kernels: the module's exports (contract: src/kernels/types.ts).
// Every pointer is a byte offset into the imported memory (env.memory); the
// module allocates nothing. Its static data and scratch areas (arena.ts,
// gemv.ts, ffn.ts) sit below heap_base().

import { HEAP_BASE } from "./arena";

export { matvec_f32, matvec_f16, matvec_i8, matvec_q8, matvec_i8_scratch_bytes } from "./matvec";
export { f16_finite_set, f16_finite, f16_special } from "./gemv";
export { dequant_f16, dequant_i8, dequant_q8, encode_f16 } from "./dequant";
export { layernorm, rmsnorm } from "./norm";
export { rope_interleaved, rope_half } from "./rope";
export { attention } from "./attention";
export { softmax, relu, silu, swiglu, add, scale } from "./activation";
export { argmax, softmax_temp } from "./sample";
export { ffn_relu_f32, ffn_relu_f16, ffn_relu_i8, ffn_relu_q8, ffn_swiglu_f32, ffn_swiglu_f16, ffn_swiglu_i8, ffn_swiglu_q8, ffn_touch_set, ffn_touch } from "./ffn";
export { cache_state_bytes, cache_init, cache_step, cache_install, cache_first_new, cache_overflow, cache_used, cache_hits, cache_misses, cache_evictions, cache_lru_evictions, cache_overflows } from "./cache";
export { ffn_relu_f32_ptrs, ffn_relu_f16_ptrs, ffn_relu_i8_ptrs, ffn_relu_q8_ptrs, ffn_swiglu_f32_ptrs, ffn_swiglu_f16_ptrs, ffn_swiglu_i8_ptrs, ffn_swiglu_q8_ptrs } from "./ffn";

/** First arena byte the host may use (after the module's static data). */
export function heap_base(): usize {
  return HEAP_BASE;
}

/** 1 in the relaxed-SIMD builds (asconfig "relaxed", "mt-relaxed": fused multiply-adds), 0 in the plain SIMD ones. */
export function simd_relaxed(): i32 {
  return ASC_FEATURE_RELAXED_SIMD ? 1 : 0;
}
export { mm_nt, transpose, bce_grad, colsum, adam_step, logit_histogram } from "./train";
export { gate_act_f32, gate_act_f16, gate_act_i8, gate_act_q8, ffn_gated_f32_ptrs, ffn_gated_f16_ptrs, ffn_gated_i8_ptrs, ffn_gated_q8_ptrs, gated_i8_max_d } from "./gated";
export { xxh64, xxh64_slot } from "./xxh64";
export { thread_init, thread_scratch_bytes, thread_scratch } from "./arena";
export { batch_scratch_bytes, matmul_f32, matmul_f16, matmul_i8, matmul_q8, ffn_relu_f32_batch, ffn_relu_f16_batch, ffn_relu_i8_batch, ffn_relu_q8_batch, ffn_swiglu_f32_batch, ffn_swiglu_f16_batch, ffn_swiglu_i8_batch, ffn_swiglu_q8_batch, matmul_q4, ffn_relu_q4_batch, ffn_swiglu_q4_batch } from "./batch";
export { ffn_rows, ffn_rows_batch } from "./rows";
export { matvec_q4, dequant_q4, ffn_relu_q4, ffn_swiglu_q4, ffn_relu_q4_ptrs, ffn_swiglu_q4_ptrs, gate_act_q4, ffn_gated_q4_ptrs } from "./q4";
