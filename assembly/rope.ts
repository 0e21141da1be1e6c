// Rotary position embeddings, in place on nHeads heads of headDim values.
// cos/sin hold headDim/2 values for the current position (same for every head).
// Each output is x0*c - x1*s or x0*s + x1*c computed as one product plus one
// signed product, which is bit-identical to the scalar formula.

/** Pairs (x[2i], x[2i+1]) within each head (llama2.c / GPT-J style). */
export function rope_interleaved(vec: usize, nHeads: i32, headDim: i32, cos: usize, sin: usize): void {
  const half = <usize>(headDim >> 1);
  const hd = <usize>headDim << 2;
  for (let h = 0; h < nHeads; h++) {
    const v = vec + <usize>h * hd;
    let i: usize = 0;
    for (; i + 4 <= half; i += 4) {
      const c = v128.load(cos + (i << 2)), s = v128.load(sin + (i << 2));
      const ns = f32x4.neg(s);
      // lane pattern for pairs 0,1: cos [c0 c0 c1 c1], sin [-s0 s0 -s1 s1], swapped x [b0 a0 b1 a1]
      const x0 = v128.load(v + (i << 3)), x1 = v128.load(v + (i << 3), 16);
      const r0 = f32x4.add(f32x4.mul(x0, v128.shuffle<f32>(c, c, 0, 0, 1, 1)), f32x4.mul(v128.shuffle<f32>(x0, x0, 1, 0, 3, 2), v128.shuffle<f32>(ns, s, 0, 4, 1, 5)));
      const r1 = f32x4.add(f32x4.mul(x1, v128.shuffle<f32>(c, c, 2, 2, 3, 3)), f32x4.mul(v128.shuffle<f32>(x1, x1, 1, 0, 3, 2), v128.shuffle<f32>(ns, s, 2, 6, 3, 7)));
      v128.store(v + (i << 3), r0);
      v128.store(v + (i << 3), r1, 16);
    }
    for (; i < half; i++) {
      const c = load<f32>(cos + (i << 2)), s = load<f32>(sin + (i << 2));
      const a = load<f32>(v + (i << 3)), b = load<f32>(v + (i << 3), 4);
      store<f32>(v + (i << 3), a * c - b * s);
      store<f32>(v + (i << 3), b * c + a * s, 4);
    }
  }
}

/** Pairs (x[i], x[i + headDim/2]) within each head (Hugging Face rotate_half / NeoX style). */
export function rope_half(vec: usize, nHeads: i32, headDim: i32, cos: usize, sin: usize): void {
  const half = <usize>(headDim >> 1);
  const hd = <usize>headDim << 2;
  for (let h = 0; h < nHeads; h++) {
    const v0 = vec + <usize>h * hd, v1 = v0 + (half << 2);
    let i: usize = 0;
    for (; i + 4 <= half; i += 4) {
      const c = v128.load(cos + (i << 2)), s = v128.load(sin + (i << 2));
      const a = v128.load(v0 + (i << 2)), b = v128.load(v1 + (i << 2));
      v128.store(v0 + (i << 2), f32x4.sub(f32x4.mul(a, c), f32x4.mul(b, s)));
      v128.store(v1 + (i << 2), f32x4.add(f32x4.mul(b, c), f32x4.mul(a, s)));
    }
    for (; i < half; i++) {
      const c = load<f32>(cos + (i << 2)), s = load<f32>(sin + (i << 2));
      const a = load<f32>(v0 + (i << 2)), b = load<f32>(v1 + (i << 2));
      store<f32>(v0 + (i << 2), a * c - b * s);
      store<f32>(v1 + (i << 2), b * c + a * s);
    }
  }
}
