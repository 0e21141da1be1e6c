// flashlm kernels, threads build (wasm/flashlm.mt.wasm: --enable simd,threads
// --sharedMemory): the same exports as index.ts on a shared memory, plus the
// split kernels src/kernels/pool.ts runs on its threads (each instance working
// in its own scratch region: arena.ts thread_init).

export * from "./index";
export { matvec_f32_rows, matvec_f16_rows, matvec_i8_prepare, matvec_i8_rows, matvec_q8_rows } from "./matvec";
export { attention_heads } from "./attention";
export { ffn_ranges, ffn_ranges_sum, ffn_range_count, ffn_parts_bytes } from "./ffn";
export { gate_act_rows, gated_h, gated_down } from "./gated";
export { matmul_rows, ffn_batch_act, ffn_batch_down } from "./batch";
export { matvec_q4_prepare, matvec_q4_rows, q4_ffn_ranges, q4_gate_act_rows, q4_gated_h, q4_gated_down } from "./q4";
export { rows_act, rows_down, rows_batch_down, rows_fold } from "./rows";
