// Sliding-window neuron cache, one per layer (PAPER.md "Windowing" and "DRAM
// management"; contract in src/kernels/types.ts). The host reserves:
//   state       cache_state_bytes() bytes (header + counters, below)
//   slots       capacity records of recordBytes = nParts * partBytes (bundled order)
//   slotNeuron  i32 [capacity]  neuron held by each slot (valid for [0, used))
//   neuronSlot  i32 [neurons]   slot of each neuron, -1 when not cached
//   mask        u32 [capacity]  activity of each slot over the last `window` tokens
//                               (bit t = active t tokens ago; bit 0 = this token)
// Used slots are always compact: [0, used). Per token cache_step costs
// O(nActive + used), plus one record copy per hole that no new neuron fills
// (step 6); nothing here scans all `neurons` except cache_init.
//
// Per token (test/helpers/window-model.ts is the executable spec):
//   1. age: mask = (mask << 1) & (2^window - 1); window 0 = no reuse: every
//      used slot is evicted before anything else (so there are no hits).
//   2. hits: active cached neurons get mask |= 1; the rest are new (ascending).
//   3. window-dead slots (mask 0) are evicted.
//   4. if live + new > capacity: LRU victims among live slots with bit 0 clear
//      (not active this token): largest ctz(mask) first (oldest most recent
//      activity), ties by lowest slot index, as many as needed (or available).
//      Victims are chosen on the slot positions before step 5.
//   5. placement: the first min(new, capacity - kept) new neurons (smallest ids)
//      take the evicted slots in ascending slot order, then slots appended at
//      the end (mask 1); the rest are overflow.
//   6. holes left over (more evictions than placed neurons): slot s ascending,
//      a hole gets the record of the last used slot (dead slots at the end are
//      dropped). PAPER.md compacts with such copies on every eviction; filling
//      holes with the new neurons first means records only move when the cache
//      shrinks, so in steady state (evictions ~ new neurons) almost nothing is
//      copied besides the new records themselves.
// Placed neurons' slots are therefore not contiguous: cache_install finds each
// one through newOut (which the host keeps until its installs are done).

// ---- state block layout (byte offsets) ----
import { HIST } from "./arena";

const S_CAPACITY = 0;
const S_NEURONS = 4;
const S_WINDOW = 8;
const S_NPARTS = 12;
const S_PARTBYTES = 16;
const S_RECBYTES = 20;
const S_SLOTS = 24;
const S_SLOTNEURON = 28;
const S_NEURONSLOT = 32;
const S_MASK = 36;
const S_USED = 40;
const S_NEWOUT = 44; // newOut of the last cache_step (cache_install reads the placed ids there)
const S_OVERFLOW = 48;
const S_WMASK = 52;
// cumulative u64 counters
const S_HITS = 64;
const S_MISSES = 72;
const S_EVICTIONS = 80;
const S_LRU = 88;
const S_OVERFLOWS = 96;
const STATE_BYTES = 128;

// HIST (arena.ts, this instance's scratch): histogram of ctz(mask) over the LRU
// candidates (window <= 32, so ctz <= 31).

export function cache_state_bytes(): i32 {
  return STATE_BYTES;
}

export function cache_init(state: usize, capacity: i32, neurons: i32, window: i32, nParts: i32, partBytes: i32,
  slots: usize, slotNeuron: usize, neuronSlot: usize, mask: usize): void {
  memory.fill(state, 0, STATE_BYTES);
  const w = <u32>min(max(window, 0), 32);
  store<u32>(state, <u32>max(capacity, 0), S_CAPACITY);
  store<u32>(state, <u32>max(neurons, 0), S_NEURONS);
  store<u32>(state, w, S_WINDOW);
  store<u32>(state, <u32>nParts, S_NPARTS);
  store<u32>(state, <u32>partBytes, S_PARTBYTES);
  store<u32>(state, <u32>(nParts * partBytes), S_RECBYTES);
  store<u32>(state, <u32>slots, S_SLOTS);
  store<u32>(state, <u32>slotNeuron, S_SLOTNEURON);
  store<u32>(state, <u32>neuronSlot, S_NEURONSLOT);
  store<u32>(state, <u32>mask, S_MASK);
  store<u32>(state, w >= 32 ? 0xffffffff : (<u32>1 << w) - 1, S_WMASK);
  memory.fill(neuronSlot, 0xff, <usize>max(neurons, 0) << 2);
  memory.fill(slotNeuron, 0xff, <usize>max(capacity, 0) << 2);
  memory.fill(mask, 0, <usize>max(capacity, 0) << 2);
}

// @ts-ignore: decorator
@inline function bump(state: usize, field: usize, by: u32): void {
  store<u64>(state + field, load<u64>(state + field) + <u64>by);
}

export function cache_step(state: usize, active: usize, nActive: i32, newOut: usize, ptrsOut: usize): i32 {
  const capacity = load<u32>(state, S_CAPACITY);
  const window = load<u32>(state, S_WINDOW);
  const wmask = load<u32>(state, S_WMASK);
  const np = <usize>load<u32>(state, S_NPARTS);
  const partBytes = <usize>load<u32>(state, S_PARTBYTES);
  const rec = <usize>load<u32>(state, S_RECBYTES);
  const slots = <usize>load<u32>(state, S_SLOTS);
  const slotNeuron = <usize>load<u32>(state, S_SLOTNEURON);
  const neuronSlot = <usize>load<u32>(state, S_NEURONSLOT);
  const mask = <usize>load<u32>(state, S_MASK);
  let used = load<u32>(state, S_USED);
  const na = <u32>max(nActive, 0);

  // 1. age (window 0: drop everything, no record moves needed)
  let windowEvicted: u32 = 0;
  if (window == 0) {
    for (let s: u32 = 0; s < used; s++) store<i32>(neuronSlot + (<usize>load<i32>(slotNeuron + (<usize>s << 2)) << 2), -1);
    windowEvicted = used;
    used = 0;
  } else {
    for (let s: u32 = 0; s < used; s++) {
      const a = mask + (<usize>s << 2);
      store<u32>(a, (load<u32>(a) << 1) & wmask);
    }
  }

  // 2. hits; new neurons (ascending, as given) go to newOut
  let nNew: u32 = 0;
  for (let i: u32 = 0; i < na; i++) {
    const id = load<i32>(active + (<usize>i << 2));
    const s = load<i32>(neuronSlot + (<usize>id << 2));
    if (s >= 0) {
      const a = mask + (<usize>s << 2);
      store<u32>(a, load<u32>(a) | 1);
    } else {
      store<i32>(newOut + (<usize>nNew << 2), id);
      nNew++;
    }
  }
  const hits = na - nNew;

  // 3./4. count live slots and the LRU candidates' ages
  memory.fill(HIST, 0, 32 * 4);
  let live: u32 = 0, candidates: u32 = 0;
  for (let s: u32 = 0; s < used; s++) {
    const m = load<u32>(mask + (<usize>s << 2));
    if (m == 0) continue;
    live++;
    if (!(m & 1)) {
      candidates++;
      const h = HIST + (<usize>ctz(m) << 2);
      store<u32>(h, load<u32>(h) + 1);
    }
  }
  windowEvicted += used - live;
  let lruEvicted: u32 = 0;
  if (live + nNew > capacity && candidates > 0) {
    const need = min(live + nNew - capacity, candidates);
    lruEvicted = need;
    // threshold age T: all candidates with ctz > T go, plus the first `atT` with ctz == T (slot order)
    let rem = need;
    let T: u32 = 1, atT: u32 = 0;
    for (let z: i32 = 31; z >= 1; z--) {
      const c = load<u32>(HIST + (<usize>z << 2));
      if (c >= rem) { T = <u32>z; atT = rem; break; }
      rem -= c;
    }
    for (let s: u32 = 0; s < used; s++) {
      const a = mask + (<usize>s << 2);
      const m = load<u32>(a);
      if (m == 0 || (m & 1)) continue;
      const z = ctz(m);
      if (z > T) store<u32>(a, 0);
      else if (z == T && atT > 0) { store<u32>(a, 0); atT--; }
    }
  }

  // 5. placement: new neurons (ascending) fill the holes (ascending slots), the rest are appended
  const keep = live - lruEvicted; // slots that stay
  const placed = min(nNew, capacity - keep);
  let j: u32 = 0;
  let s: u32 = 0;
  if (used != keep) {
    for (; s < used && j < placed; s++) {
      const ms = mask + (<usize>s << 2);
      if (load<u32>(ms) != 0) continue;
      store<i32>(neuronSlot + (<usize>load<i32>(slotNeuron + (<usize>s << 2)) << 2), -1);
      const id = load<i32>(newOut + (<usize>j << 2));
      store<i32>(slotNeuron + (<usize>s << 2), id);
      store<i32>(neuronSlot + (<usize>id << 2), <i32>s);
      store<u32>(ms, 1);
      j++;
    }
  }
  for (; j < placed; j++) {
    const id = load<i32>(newOut + (<usize>j << 2));
    store<i32>(slotNeuron + (<usize>used << 2), id);
    store<i32>(neuronSlot + (<usize>id << 2), <i32>used);
    store<u32>(mask + (<usize>used << 2), 1);
    used++;
  }

  // 6. holes left over (more evicted than placed): move the last used slot into each.
  // Slots below s are all in use, and every new neuron sits below s, so only
  // records that are already in place move.
  if (used != keep + placed) {
    while (s < used) {
      const ms = mask + (<usize>s << 2);
      if (load<u32>(ms) != 0) { s++; continue; }
      store<i32>(neuronSlot + (<usize>load<i32>(slotNeuron + (<usize>s << 2)) << 2), -1);
      let last = used - 1;
      while (last > s && load<u32>(mask + (<usize>last << 2)) == 0) {
        store<i32>(neuronSlot + (<usize>load<i32>(slotNeuron + (<usize>last << 2)) << 2), -1);
        last--;
      }
      if (last > s) {
        const id = load<i32>(slotNeuron + (<usize>last << 2));
        memory.copy(slots + <usize>s * rec, slots + <usize>last * rec, rec);
        store<i32>(slotNeuron + (<usize>s << 2), id);
        store<i32>(neuronSlot + (<usize>id << 2), <i32>s);
        store<u32>(ms, load<u32>(mask + (<usize>last << 2)));
        used = last;
        s++;
      } else {
        used = s;
      }
    }
  }
  const overflow = nNew - placed;

  // part pointers of every active neuron (0 for overflow)
  for (let i: u32 = 0; i < na; i++) {
    const s = load<i32>(neuronSlot + (<usize>load<i32>(active + (<usize>i << 2)) << 2));
    const o = ptrsOut + ((<usize>i * np) << 2);
    if (s < 0) {
      for (let p: usize = 0; p < np; p++) store<u32>(o + (p << 2), 0);
    } else {
      const base = slots + <usize>s * rec;
      for (let p: usize = 0; p < np; p++) store<u32>(o + (p << 2), <u32>(base + p * partBytes));
    }
  }

  store<u32>(state, used, S_USED);
  store<u32>(state, <u32>newOut, S_NEWOUT);
  store<u32>(state, overflow, S_OVERFLOW);
  bump(state, S_HITS, hits);
  bump(state, S_MISSES, placed);
  bump(state, S_EVICTIONS, windowEvicted);
  bump(state, S_LRU, lruEvicted);
  bump(state, S_OVERFLOWS, overflow);
  return <i32>placed;
}

/**
 * Copies the records of placed new neurons newOut[first .. first+count) (newOut of
 * the last cache_step) into their slots; src u32[count][nParts] = each part's
 * staging address. Parts that are consecutive both in staging and in the slots
 * (bundled staging: a whole record; neighbouring slots) go in one memory.copy.
 * Entries that are not placed (overflow) are skipped.
 */
export function cache_install(state: usize, first: i32, count: i32, src: usize): void {
  const np = <usize>load<u32>(state, S_NPARTS);
  const partBytes = <usize>load<u32>(state, S_PARTBYTES);
  const rec = <usize>load<u32>(state, S_RECBYTES);
  const slots = <usize>load<u32>(state, S_SLOTS);
  const neuronSlot = <usize>load<u32>(state, S_NEURONSLOT);
  const ids = <usize>load<u32>(state, S_NEWOUT) + (<usize>max(first, 0) << 2);
  let runSrc: usize = 0, runDst: usize = 0, runLen: usize = 0;
  for (let j: usize = 0, n = <usize>max(count, 0); j < n; j++) {
    const slot = load<i32>(neuronSlot + (<usize>load<i32>(ids + (j << 2)) << 2));
    if (slot < 0) continue;
    let dst = slots + <usize>slot * rec;
    for (let p: usize = 0; p < np; p++) {
      const s = <usize>load<u32>(src + ((j * np + p) << 2));
      if (runLen != 0 && s == runSrc + runLen && dst == runDst + runLen) runLen += partBytes;
      else {
        if (runLen != 0) memory.copy(runDst, runSrc, runLen);
        runSrc = s; runDst = dst; runLen = partBytes;
      }
      dst += partBytes;
    }
  }
  if (runLen != 0) memory.copy(runDst, runSrc, runLen);
}

/** Index in newOut of the first placed new neuron: always 0 (placed ones come first). */
export function cache_first_new(state: usize): i32 {
  return 0;
}
export function cache_overflow(state: usize): i32 {
  return load<i32>(state, S_OVERFLOW);
}
export function cache_used(state: usize): i32 {
  return load<i32>(state, S_USED);
}
export function cache_hits(state: usize): f64 {
  return <f64>load<u64>(state, S_HITS);
}
export function cache_misses(state: usize): f64 {
  return <f64>load<u64>(state, S_MISSES);
}
export function cache_evictions(state: usize): f64 {
  return <f64>load<u64>(state, S_EVICTIONS);
}
export function cache_lru_evictions(state: usize): f64 {
  return <f64>load<u64>(state, S_LRU);
}
export function cache_overflows(state: usize): f64 {
  return <f64>load<u64>(state, S_OVERFLOWS);
}
