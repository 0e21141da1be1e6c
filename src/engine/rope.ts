/**
 * Rotary inverse frequencies, default and scaled, as transformers'
 * modeling_rope_utils.py computes them (f32 arithmetic, as PyTorch does):
 *   default  1 / base^(2i/hd)
 *   linear   default / factor
 *   llama3   low frequencies / factor, high ones kept, the band between blended
 *   dynamic  (NTK) the default with base raised for sequences longer than originalMaxPos
 *   longrope (Phi-3) the default divided by per-frequency factors, short or long
 */
import type { ArchConfig } from '../format/types.js';
import type { Kernels } from '../kernels/types.js';
import type { Tensor } from './tensor.js';

const f = Math.fround;

/** 1 / base^(2i/hd) for i < hd/2, in f32. */
function defaultFreqs(base: number, headDim: number): Float32Array {
  const out = new Float32Array(headDim / 2);
  for (let i = 0; i < headDim / 2; i++) out[i] = f(1 / f(Math.pow(base, f((2 * i) / headDim))));
  return out;
}

/**
 * The inverse frequencies for a sequence of `seqLen` positions. Only 'dynamic'
 * depends on seqLen (Hugging Face recomputes it when a forward call reaches
 * past originalMaxPos, with seq_len = the last position + 1).
 */
export function ropeFrequencies(a: ArchConfig, seqLen = 0): Float32Array {
  const base = a.ropeTheta ?? 10000;
  const hd = a.headDim;
  const s = a.ropeScaling;
  if (!s) return defaultFreqs(base, hd);
  if (s.type === 'linear') return defaultFreqs(base, hd).map((x) => f(x / s.factor));
  if (s.type === 'dynamic') {
    if (seqLen <= s.originalMaxPos) return defaultFreqs(base, hd);
    const grown = f(base * f(Math.pow(f(f(f(s.factor * seqLen) / s.originalMaxPos) - (s.factor - 1)), hd / (hd - 2))));
    return defaultFreqs(grown, hd);
  }
  if (s.type === 'longrope') {
    // Hugging Face switches to the long factors once a call reaches past originalMaxPos.
    const ext = seqLen > s.originalMaxPos ? s.longFactor : s.shortFactor;
    return new Float32Array(hd / 2).map((_, i) => f(1 / f(f(ext[i]!) * f(Math.pow(base, f((2 * i) / hd))))));
  }
  // llama3: wavelengths longer than originalMaxPos/lowFreqFactor are scaled, shorter than originalMaxPos/highFreqFactor kept.
  const inv = defaultFreqs(base, hd);
  const lowWavelen = s.originalMaxPos / s.lowFreqFactor;
  const highWavelen = s.originalMaxPos / s.highFreqFactor;
  return inv.map((x) => {
    const wavelen = f((2 * Math.PI) / x);
    if (wavelen < highWavelen) return x;
    if (wavelen > lowWavelen) return f(x / s.factor);
    const smooth = f(f(f(s.originalMaxPos / wavelen) - s.lowFreqFactor) / (s.highFreqFactor - s.lowFreqFactor));
    return f(f(f(f(1 - smooth) * x) / s.factor) + f(smooth * x));
  });
}

/** True when the frequencies differ from position to position (dynamic NTK, LongRoPE). */
export function ropeVaries(a: ArchConfig): boolean {
  return a.ropeScaling?.type === 'dynamic' || a.ropeScaling?.type === 'longrope';
}

/** The factor Hugging Face multiplies cos and sin by (LongRoPE's attention factor; 1 for the others). */
export function ropeAttentionFactor(a: ArchConfig): number {
  return a.ropeScaling?.type === 'longrope' ? a.ropeScaling.attentionFactor : 1;
}

/**
 * One token's query and key rows before attention: Qwen3's RMSNorm over each
 * head (when the layer has q/k norms), then RoPE in the model's style with
 * this position's cos and sin (headDim/2 f32 each). Shared by the engine and
 * calibrate's layer-by-layer pass, so both compute the same bits.
 */
export function positionQK(k: Kernels, a: ArchConfig, qNorm: Tensor | undefined, kNorm: Tensor | undefined, q: number, kRow: number, cos: number, sin: number): void {
  if (qNorm && kNorm) {
    const hb = a.headDim * 4;
    for (let h = 0; h < a.nHeads; h++) k.rmsnorm(q + h * hb, q + h * hb, qNorm.ptr, a.headDim, a.normEps);
    for (let h = 0; h < a.nKvHeads; h++) k.rmsnorm(kRow + h * hb, kRow + h * hb, kNorm.ptr, a.headDim, a.normEps);
  }
  if (a.positions !== 'rope') return;
  if (a.ropeStyle === 'half') {
    k.rope_half(q, a.nHeads, a.headDim, cos, sin);
    k.rope_half(kRow, a.nKvHeads, a.headDim, cos, sin);
  } else {
    k.rope_interleaved(q, a.nHeads, a.headDim, cos, sin);
    k.rope_interleaved(kRow, a.nKvHeads, a.headDim, cos, sin);
  }
}
