/**
 * Stop strings over streamed text: text is released as soon as it cannot be
 * the start of a stop string; a suffix that could be is held back, and let go
 * when the next text shows it is not one. The text before the first stop
 * string is all that is ever emitted: never the stop string, not even part
 * of it.
 */
export class StopMatcher {
  private held = '';
  private readonly stops: string[];

  constructor(stops: readonly string[]) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  get active(): boolean {
    return this.stops.length > 0;
  }

  /** Adds text; returns what may be emitted now, and whether a stop string was reached (then nothing more will come). */
  push(piece: string): { text: string; stopped: boolean } {
    const s = this.held + piece;
    let at = -1;
    for (const stop of this.stops) {
      const i = s.indexOf(stop);
      if (i >= 0 && (at < 0 || i < at)) at = i;
    }
    if (at >= 0) {
      this.held = '';
      return { text: s.slice(0, at), stopped: true };
    }
    // Hold the longest suffix that is a proper prefix of some stop string.
    let keep = 0;
    for (const stop of this.stops) {
      for (let n = Math.min(stop.length - 1, s.length); n > keep; n--) {
        if (s.endsWith(stop.slice(0, n))) {
          keep = n;
          break;
        }
      }
    }
    this.held = s.slice(s.length - keep);
    return { text: s.slice(0, s.length - keep), stopped: false };
  }

  /** The end of the text: what was held back was not a stop string after all. */
  flush(): string {
    const h = this.held;
    this.held = '';
    return h;
  }
}
