// AssemblyScript probe for bench/streams.ts: how fast 4 concurrent weight
// streams read DRAM depending on where they sit. Each function takes 4 f32 row
// dots at a time against x (768 columns, the engine's per-row arithmetic: one
// accumulator, acc + (w0*x0 + w1*x1) per 8 columns) and writes one f32x4 per group.

// @ts-ignore: decorator
@inline function d2(acc: v128, a: v128, x: v128, b: v128, y: v128): v128 {
  return f32x4.add(acc, f32x4.add(f32x4.mul(a, x), f32x4.mul(b, y)));
}

/** 4 rows of rb bytes whose starts are p, p + st, p + 2st, p + 3st. */
// @ts-ignore: decorator
@inline function rows4(out: usize, p: usize, st: usize, x: usize, rb: usize): void {
  const p1 = p + st, p2 = p1 + st, p3 = p2 + st;
  let a = f32x4.splat(0), b = f32x4.splat(0), c = f32x4.splat(0), d = f32x4.splat(0);
  for (let j: usize = 0; j < rb; j += 32) {
    const xa = v128.load(x + j), xb = v128.load(x + j, 16);
    a = d2(a, v128.load(p + j), xa, v128.load(p + j, 16), xb);
    b = d2(b, v128.load(p1 + j), xa, v128.load(p1 + j, 16), xb);
    c = d2(c, v128.load(p2 + j), xa, v128.load(p2 + j, 16), xb);
    d = d2(d, v128.load(p3 + j), xa, v128.load(p3 + j, 16), xb);
  }
  v128.store(out, f32x4.add(f32x4.add(a, b), f32x4.add(c, d)));
}

/** One row at a time through `rows` rows of rb bytes (a single stream). */
export function one_stream(out: usize, W: usize, x: usize, rows: usize, rb: usize): void {
  for (let r: usize = 0; r < rows; r++) {
    let a = f32x4.splat(0);
    const p = W + r * rb;
    for (let j: usize = 0; j < rb; j += 32) a = d2(a, v128.load(p + j), v128.load(x + j), v128.load(p + j, 16), v128.load(x + j, 16));
    v128.store(out, a);
  }
}

/** Rows 4 at a time: neighbours (far = 0) or one from each quarter (far = 1). */
export function four_rows(out: usize, W: usize, x: usize, rows: usize, rb: usize, far: i32): void {
  const q = rows >> 2;
  for (let r: usize = 0; r < q; r++) {
    if (far) rows4(out, W + r * rb, q * rb, x, rb);
    else rows4(out, W + 4 * r * rb, rb, x, rb);
  }
}

/** 4 far streams over records of rd + sk bytes: each reads rd bytes of a record (in rows of rb), skips sk. */
export function four_records(out: usize, W: usize, x: usize, total: usize, rb: usize, rd: usize, sk: usize): void {
  const rec = rd + sk, q = (total / rec) >> 2;
  for (let r: usize = 0; r < q; r++) {
    for (let o: usize = 0; o < rd; o += rb) rows4(out, W + r * rec + o, q * rec, x, rb);
  }
}

/** Reads bytes [W, W + n) with 4 far streams and no arithmetic but an OR: the read rate with nothing to compute. */
export function read_only(out: usize, W: usize, n: usize): void {
  const q = (n >> 2) & ~(<usize>63);
  let a = i32x4.splat(0), b = i32x4.splat(0), c = i32x4.splat(0), d = i32x4.splat(0);
  for (let j: usize = 0; j < q; j += 64) {
    const p = W + j;
    a = v128.or(a, v128.or(v128.or(v128.load(p), v128.load(p, 16)), v128.or(v128.load(p, 32), v128.load(p, 48))));
    b = v128.or(b, v128.or(v128.or(v128.load(p + q), v128.load(p + q, 16)), v128.or(v128.load(p + q, 32), v128.load(p + q, 48))));
    c = v128.or(c, v128.or(v128.or(v128.load(p + 2 * q), v128.load(p + 2 * q, 16)), v128.or(v128.load(p + 2 * q, 32), v128.load(p + 2 * q, 48))));
    d = v128.or(d, v128.or(v128.or(v128.load(p + 3 * q), v128.load(p + 3 * q, 16)), v128.or(v128.load(p + 3 * q, 32), v128.load(p + 3 * q, 48))));
  }
  v128.store(out, v128.or(v128.or(a, b), v128.or(c, d)));
}
