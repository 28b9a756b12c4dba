// duetbox lyrics, for the phone page and the venue screen: which line is sung at a
// given moment of the song, and a small view that shows the current line (sung
// syllables lit) and the next one. The moment comes from the page: a phone from the
// audio it is playing, the screen from the speakers' position (docs/protocol.md).
//
// Pure functions first (tested under node in web/test), the DOM part after.

/** A line stays shown this long after its end when no line follows at once. */
export const HOLD_MS = 1500;

/**
 * The lines at `ms`: `current` (index of the line being sung, -1 for none), `next`
 * (index of the line after it, -1 for none) and `sung` (syllables of the current line
 * already reached). Lines are sorted by start (the box sorts them).
 */
export function lyricAt(lines, ms) {
  let current = -1;
  // Binary search: the last line that has started.
  let lo = 0;
  let hi = lines.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (lines[mid].start_ms <= ms) {
      current = mid;
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  if (current >= 0 && ms > lines[current].end_ms + HOLD_MS) current = -1;
  const next = current >= 0
    ? (current + 1 < lines.length ? current + 1 : -1)
    : lines.findIndex((l) => l.start_ms > ms);
  let sung = 0;
  if (current >= 0) {
    for (const s of lines[current].syllables) if (s.at_ms <= ms) sung += 1;
  }
  return { current, next, sung };
}

/**
 * The count-in number to show at `ms` of the song (negative during the count-in of
 * `beats` clicks over `countInMs`): `beats` on the first click down to 1 on the last,
 * null outside the count-in.
 */
export function countAt(ms, countInMs, beats) {
  if (!(ms < 0) || !(countInMs > 0) || !(beats > 0) || ms < -countInMs) return null;
  const beat = countInMs / beats;
  return Math.min(beats, Math.ceil(-ms / beat));
}

/** Whether a line of `part` ("all", "p1", "p2") is for the singer in `slot` ("A", "B"). */
export function isMine(part, slot) {
  if (part === 'all' || !slot) return true;
  return (part === 'p1' && slot === 'A') || (part === 'p2' && slot === 'B');
}

/** A reading this far (ms) from where the clock thought the song was is a seek, a
 * pause or a new song: the clock jumps to it. */
export const JUMP_MS = 120;
/** How far (ms) a prediction may stray outside what a reading allows before the clock
 * takes that reading: the box's own account of its speakers moves by a few ms between
 * the audio thread's reports. */
export const SLACK_MS = 5;

/**
 * Where the speakers are in the song, for a page that polls the box (the venue
 * screen): each reading is the box's `position_ms`, read at some moment of the
 * round trip. The reading with the shortest round trip wins (old ones age by 1 ms a
 * second), unless the song jumped, or the clock's own prediction falls outside what a
 * reading allows: then the speakers moved against this page's clock (the audio
 * stalled, or the two clocks drift), and a best round trip from before would keep the
 * lines that far off for the rest of the song.
 */
export class SongClock {
  constructor() {
    /** { ms, at (the page's clock, ms), rtt, playing, generation } or null. */
    this.anchor = null;
  }

  /** The song position (ms) at `now` (the page's clock), or null: no song. */
  at(now) {
    const a = this.anchor;
    if (!a) return null;
    return a.playing ? a.ms + (now - a.at) : a.ms;
  }

  /** The box said the song `generation` was at `positionMs` (`playing` or not) in a
   * round trip from `sentAt` to `arrivedAt` (the page's clock, ms); null: no song. */
  reading(song, sentAt, arrivedAt) {
    if (!song) {
      this.anchor = null;
      return;
    }
    const { positionMs, playing, generation } = song;
    const rtt = arrivedAt - sentAt;
    const a = this.anchor;
    const same = a && a.generation === generation && a.playing === playing;
    const predicted = same ? this.at(arrivedAt) : null;
    const ms = positionMs + (playing ? rtt / 2 : 0);
    const jumped = predicted === null || Math.abs(predicted - ms) > JUMP_MS;
    // At the answer's arrival a playing song is between positionMs (read as it left)
    // and positionMs + rtt (read as the question came in).
    const outside = predicted !== null && (playing
      ? predicted < positionMs - SLACK_MS || predicted > positionMs + rtt + SLACK_MS
      : Math.abs(predicted - positionMs) > SLACK_MS);
    const age = a ? (arrivedAt - a.at) / 1000 : 0;
    if (jumped || outside || rtt <= a.rtt + age) {
      this.anchor = { ms, at: arrivedAt, rtt, playing, generation };
    }
  }
}

/** Shows lyrics in two elements; remembers when each line appeared (for tests). */
export class LyricsView {
  constructor(currentEl, nextEl) {
    this.currentEl = currentEl;
    this.nextEl = nextEl;
    this.song = null;
    this.lines = [];
    this.shown = { current: -2, next: -2, sung: -1 };
    this.slot = null;
    /** The count-in of the song playing: { ms, beats } (the `queue` message's song). */
    this.countIn = null;
    /** [{ line, at (performance.now()), ms (song position the page computed) }] */
    this.appeared = [];
    /** The count-in numbers as they appeared: [{ count, at, ms }]. */
    this.counted = [];
  }

  /** Loads the lyrics of song `id` (null: none). */
  async load(id) {
    if (id === this.song) return;
    this.song = id;
    this.lines = [];
    this.appeared = [];
    this.counted = [];
    this.render(-1, -1, 0);
    if (!id) return;
    try {
      const r = await fetch(`/songs/${id}/lyrics`, { cache: 'no-store' });
      if (!r.ok || this.song !== id) return;
      const lyrics = await r.json();
      if (this.song === id && Array.isArray(lyrics.lines)) this.lines = lyrics.lines;
    } catch (_) {
      // No lyrics is a song without lyrics.
    }
  }

  /** Shows what is sung at `ms` of the song (null: nothing plays). */
  show(ms) {
    const c = this.countIn;
    const count = ms === null || !c ? null : countAt(ms, c.ms, c.beats);
    if (count !== null) {
      this.renderCount(count, ms);
      return;
    }
    if (ms === null || !this.lines.length) {
      this.render(-1, -1, 0);
      return;
    }
    const { current, next, sung } = lyricAt(this.lines, ms);
    if (current !== this.shown.current && current >= 0) {
      this.appeared.push({ line: current, at: performance.now(), ms });
    }
    this.render(current, next, sung);
  }

  renderCount(count, ms) {
    if (this.shown.count === count) return;
    this.counted.push({ count, at: performance.now(), ms });
    this.shown = { current: -2, next: -2, sung: -1, count };
    this.currentEl.replaceChildren(String(count));
    this.currentEl.dataset.count = String(count);
    delete this.currentEl.dataset.line;
    this.nextEl.textContent = this.lines.length ? this.lines[0].text : '';
  }

  render(current, next, sung) {
    const s = this.shown;
    if (s.current === current && s.next === next && s.sung === sung) return;
    this.shown = { current, next, sung };
    const el = this.currentEl;
    el.replaceChildren();
    delete el.dataset.count;
    if (current >= 0) {
      const line = this.lines[current];
      line.syllables.forEach((syl, k) => {
        const span = document.createElement('span');
        span.textContent = syl.text;
        if (k < sung) span.className = 'sung';
        el.append(span);
      });
      el.dataset.line = String(current);
      el.dataset.part = line.part;
      el.classList.toggle('not-mine', !isMine(line.part, this.slot));
    } else {
      delete el.dataset.line;
    }
    this.nextEl.textContent = next >= 0 ? this.lines[next].text : '';
  }
}
