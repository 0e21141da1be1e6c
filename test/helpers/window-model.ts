/**
 * Plain TypeScript model of the sliding-window neuron cache (assembly/cache.ts):
 * the executable spec the WebAssembly cache is compared with, token by token.
 * Written for obviousness, not speed: arrays and a Map, every step spelled out
 * literally (the wasm code does the same in fewer passes).
 *
 * Per token (active = ascending distinct ids):
 *   1. age every used slot's mask: (mask << 1) & (2^window - 1);
 *      window 0 = no reuse: all used slots are evicted first (no hits possible).
 *   2. hits: active cached neurons get mask |= 1; the others are new.
 *   3. window-dead slots (mask 0) will be evicted.
 *   4. if live + new > capacity: LRU victims among live slots whose bit 0 is
 *      clear: largest count of trailing zeros first, ties by lowest slot index
 *      (slot positions as they are before any eviction of this token), until
 *      the new ones fit or no candidate is left.
 *   5. place the first min(new, capacity - kept) new neurons: into the dead
 *      slots in ascending slot order, then appended at the end (mask 1); the
 *      rest overflow.
 *   6. dead slots left over: for s ascending, while slot s is dead, move the
 *      last used slot into s (record, neuron, mask) and shrink `used` by one.
 */

export interface ModelStep {
  /** placed new neurons (ascending) then overflow neurons (ascending): what newOut holds */
  newList: number[];
  placed: number;
  overflow: number;
  hits: number;
  windowEvictions: number;
  lruEvictions: number;
}

export class WindowModel {
  /** neuron of each used slot, slot order */
  slotNeuron: number[] = [];
  /** activity mask of each used slot */
  mask: number[] = [];
  readonly counters = { hits: 0, misses: 0, evictions: 0, lruEvictions: 0, overflows: 0 };

  constructor(readonly capacity: number, readonly window: number) {
    if (window < 0 || window > 32) throw new RangeError('window must be 0..32');
  }

  get used(): number {
    return this.slotNeuron.length;
  }

  slotOf(neuron: number): number {
    return this.slotNeuron.indexOf(neuron);
  }

  /** neuron -> slot of every cached neuron */
  slots(): Map<number, number> {
    return new Map(this.slotNeuron.map((n, s) => [n, s]));
  }

  cached(): Set<number> {
    return new Set(this.slotNeuron);
  }

  step(active: readonly number[]): ModelStep {
    for (let i = 1; i < active.length; i++) {
      if (!(active[i - 1]! < active[i]!)) throw new Error('active ids must be ascending and distinct');
    }
    let windowEvictions = 0;

    // 1. age
    if (this.window === 0) {
      windowEvictions += this.slotNeuron.length;
      this.slotNeuron = [];
      this.mask = [];
    } else {
      const keep = this.window === 32 ? 0xffffffff : 2 ** this.window - 1;
      this.mask = this.mask.map((m) => ((m << 1) & keep) >>> 0);
    }

    // 2. hits
    const fresh: number[] = [];
    let hits = 0;
    const where = this.slots();
    for (const id of active) {
      const s = where.get(id) ?? -1;
      if (s >= 0) {
        this.mask[s] = (this.mask[s]! | 1) >>> 0;
        hits++;
      } else {
        fresh.push(id);
      }
    }

    // 3. window-dead slots
    const dead = this.mask.map((m) => m === 0);
    const deadCount = dead.filter((x) => x).length;
    windowEvictions += deadCount;
    const live = this.used - deadCount;

    // 4. LRU victims
    let lruEvictions = 0;
    let excess = live + fresh.length - this.capacity;
    if (excess > 0) {
      const candidates: { slot: number; age: number }[] = [];
      for (let s = 0; s < this.used; s++) {
        const m = this.mask[s]!;
        if (m !== 0 && (m & 1) === 0) candidates.push({ slot: s, age: trailingZeros(m) });
      }
      candidates.sort((a, b) => b.age - a.age || a.slot - b.slot);
      for (const c of candidates) {
        if (excess <= 0) break;
        dead[c.slot] = true;
        lruEvictions++;
        excess--;
      }
    }

    // 5. place: new neurons (ascending) fill the dead slots (ascending), then go at the end
    const placed = Math.min(fresh.length, this.capacity - (this.used - dead.filter((x) => x).length));
    let j = 0;
    for (let s = 0; s < this.used && j < placed; s++) {
      if (dead[s]) {
        this.slotNeuron[s] = fresh[j++]!;
        this.mask[s] = 1;
        dead[s] = false;
      }
    }
    while (j < placed) {
      this.slotNeuron.push(fresh[j++]!);
      this.mask.push(1);
      dead.push(false);
    }
    const overflow = fresh.length - placed;

    // 6. dead slots left: the last used slot moves into each
    for (let s = 0; s < this.slotNeuron.length; s++) {
      while (s < this.slotNeuron.length && dead[s]) {
        const last = this.slotNeuron.length - 1;
        this.slotNeuron[s] = this.slotNeuron[last]!;
        this.mask[s] = this.mask[last]!;
        dead[s] = dead[last]!;
        this.slotNeuron.pop();
        this.mask.pop();
        dead.pop();
      }
    }

    this.counters.hits += hits;
    this.counters.misses += placed;
    this.counters.evictions += windowEvictions;
    this.counters.lruEvictions += lruEvictions;
    this.counters.overflows += overflow;
    return { newList: fresh, placed, overflow, hits, windowEvictions, lruEvictions };
  }
}

export function trailingZeros(m: number): number {
  let z = 0;
  while (z < 32 && ((m >>> z) & 1) === 0) z++;
  return z;
}
