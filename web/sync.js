// Playout sync, the phone's half (docs/sync.md): the box's clock as this phone sees it,
// what this phone plays and when, and the extra delay the box steers it by.
//
// The box is the timeline's owner. This phone measures (1) its clock against the box's
// by `ping`/`pong` (the box puts its clock in `pong.now`; the round trip with the
// least delay is the one to trust), (2) which RTP timestamp of its return mix it is
// playing and when (`RTCRtpReceiver.getSynchronizationSources()`), plus what the audio
// output adds after that, and reports both as a `playout`. The box answers each report
// with a `sync`: how far this phone plays from the speakers (positive: late), and the
// phone takes most of that off its extra delay, so the loop closes on what the phone
// actually plays, however its jitter buffer moves.
//
// Pure apart from the time and receiver passed in: unit-tested under node.

/** Clock samples kept (one a second while live): the best of the last ten seconds. */
export const CLOCK_SAMPLES = 10;
/** The share of each reported offset taken off the extra delay: a little under one,
 * so a noisy report moves the phone less than the whole error. */
export const STEER_GAIN = 0.8;
/** Offsets within this (ms) are left alone: the measurement is not finer. */
export const DEAD_BAND_MS = 1.5;
/** The most extra delay the phone adds (ms); the protocol's limit too. */
export const MAX_EXTRA_MS = 2000;

/** The box's clock as measured through ping/pong round trips. */
export class BoxClock {
  constructor() {
    this.samples = [];
  }

  /** A pong: sent at `sent`, received at `received` (performance.now(), ms), the box's
   * clock `boxNow` (ms) when it answered. */
  add(sent, received, boxNow) {
    if (!(received >= sent) || !Number.isFinite(boxNow)) return;
    this.samples.push({ rtt: received - sent, offset: boxNow - (sent + received) / 2 });
    if (this.samples.length > CLOCK_SAMPLES) this.samples.shift();
  }

  /** The box's clock minus performance.now() (ms), from the fastest recent round trip;
   * null before any. */
  offset() {
    if (!this.samples.length) return null;
    let best = this.samples[0];
    for (const s of this.samples) if (s.rtt < best.rtt) best = s;
    return best.offset;
  }

  /** The fastest recent round trip (ms): the offset is good to half of it. */
  bestRtt() {
    if (!this.samples.length) return null;
    return Math.min(...this.samples.map((s) => s.rtt));
  }
}

/** A `wall_clock` moves the box only when it changed by this much (ms). */
export const WALL_CLOCK_STEP_MS = 0.5;

/**
 * The `wall_clock` message, or null when the box already has it: the box's clock less
 * this page's wall clock (`performance.timeOrigin + performance.now()`, the clock its
 * RTCP sender reports use). With it the box turns those reports into the network's
 * one-way time from this phone (docs/sync.md). `clockOffset`: BoxClock.offset();
 * `sent`: the offset last sent on this connection, or null.
 */
export function wallClockReport(clockOffset, timeOrigin, sent) {
  if (clockOffset === null || !Number.isFinite(timeOrigin)) return null;
  const offset = Math.round((clockOffset - timeOrigin) * 1000) / 1000;
  if (sent !== null && Math.abs(offset - sent) < WALL_CLOCK_STEP_MS) return null;
  return { type: 'wall_clock', offset };
}

/** A synchronization source's `timestamp` on the performance clock: Chromium stamps
 * it on the Date clock (ms since 1970), the specification on performance's. */
export function sourceTimeToPerf(timestamp, timeOrigin) {
  return timestamp > 1e12 ? timestamp - timeOrigin : timestamp;
}

/**
 * The `playout` report, or null when there is nothing to say yet. `source`: the
 * receiver's synchronization source ({ rtpTimestamp, timestamp }); `outputMs`: what
 * the audio output adds after WebRTC hands the audio over; `extraMs`: the delay this
 * phone adds itself; `clockOffset`: BoxClock.offset().
 */
export function playoutReport(source, timeOrigin, outputMs, extraMs, clockOffset) {
  if (!source || typeof source.rtpTimestamp !== 'number' || typeof source.timestamp !== 'number') return null;
  if (clockOffset === null) return null;
  const heard = sourceTimeToPerf(source.timestamp, timeOrigin) + outputMs + extraMs;
  const at = heard + clockOffset;
  if (!(at >= 0)) return null;
  return { type: 'playout', rtp: source.rtpTimestamp >>> 0, at: Math.round(at * 1000) / 1000, extra: Math.round(extraMs * 1000) / 1000 };
}

/** The extra delay after the box said the phone plays `offsetMs` from the speakers. */
export function steer(extraMs, offsetMs) {
  if (!Number.isFinite(offsetMs) || Math.abs(offsetMs) <= DEAD_BAND_MS) return extraMs;
  return Math.min(MAX_EXTRA_MS, Math.max(0, extraMs - STEER_GAIN * offsetMs));
}

/** How far under the jitter buffer's own target the floor is held (ms): the buffer
 * may drain that much, and a floor equal to the target never pushes it up. */
export const FLOOR_MARGIN_MS = 5;
/** The highest floor (ms): the lead goes no further by default (`audio.max_lead_ms`). */
export const MAX_FLOOR_MS = 400;

/**
 * The floor the page holds under its jitter buffer (`RTCRtpReceiver.jitterBufferTarget`,
 * a minimum in Chromium's NetEq) while one song is on: its buffer's own target, as high
 * as it has been during the song, less FLOOR_MARGIN_MS.
 *
 * A jitter buffer grows at once when packets come late and drains by itself seconds
 * later (Chromium's, here: 30 → 210 ms at a song's start, back to 30 ms ten seconds
 * on, in under 2 s). Each drain plays the song earlier by what it drops, tens of ms,
 * until the sync loop (reports twice a second) has made it up; Chromium's account of
 * what it plays runs ahead of the sound meanwhile. The lead already keeps the
 * speakers that far behind for the song, so holding the buffer there costs the
 * stage nothing and keeps the phone's playout where the loop put it. A new song (or
 * none) lets it go. Fed the target, not the buffer's level: NetEq keeps its level up
 * to 20 ms above the target, and a floor fed the level would ratchet itself up.
 */
export class JitterFloor {
  constructor() {
    this.key = null;
    this.ms = 0;
  }

  /** Takes the buffer's target (ms) over the last poll and the song on (any key,
   * its generation say; null when none); returns the floor to hold (ms, 0: none).
   * The first reading of a song is not taken: the last song's floor still held it. */
  observe(targetMs, key) {
    if (key !== this.key) {
      // This reading was taken under the last song's floor.
      this.key = key;
      this.ms = 0;
      return 0;
    }
    if (key === null || key === undefined || !Number.isFinite(targetMs)) return this.ms;
    const floor = Math.min(MAX_FLOOR_MS, Math.floor(targetMs - FLOOR_MARGIN_MS));
    if (floor > this.ms) this.ms = floor;
    return this.ms;
  }

  /** A new receiver: nothing held. */
  clear() {
    this.key = null;
    this.ms = 0;
  }
}

/** What the singer is told: in time, or how far off and which way. */
export function describeOffset(offsetMs) {
  if (offsetMs === null || !Number.isFinite(offsetMs)) return null;
  const ms = Math.round(Math.abs(offsetMs));
  if (ms <= 10) return `in time with the speakers (±${Math.max(1, ms)} ms)`;
  return offsetMs > 0 ? `${ms} ms behind the speakers` : `${ms} ms ahead of the speakers`;
}

/** Receiver samples kept (one each ~125 ms): the last 4 s, what a level match spans. */
export const TRACE_KEEP_MS = 4000;

/**
 * The receiver's account over the last few seconds: which RTP timestamp it handed to
 * the page's audio when (performance ms), sampled as it goes. A jitter buffer that
 * grows or drains moves that mapping by tens of ms within the 2 s a level match spans;
 * read from its last sample alone, the older half of the box's levels would be
 * predicted where they did not play, and the match smeared or lost.
 */
export class ReceiverTrace {
  constructor() {
    this.samples = [];
  }

  /** A synchronization source ({ rtpTimestamp, timestamp }) read at `timeOrigin`;
   * repeats of the last sample are left out. */
  add(source, timeOrigin) {
    if (!source || typeof source.rtpTimestamp !== 'number' || typeof source.timestamp !== 'number') return;
    const sample = { rtp: source.rtpTimestamp >>> 0, at: sourceTimeToPerf(source.timestamp, timeOrigin) };
    const last = this.samples[this.samples.length - 1];
    if (last && last.rtp === sample.rtp) return;
    // A new stream (timestamps that jump back or far ahead) starts a new trace.
    if (last && Math.abs(((sample.rtp - last.rtp) | 0) / 48 - (sample.at - last.at)) > 2000) this.samples = [];
    this.samples.push(sample);
    while (this.samples.length && this.samples[0].at < sample.at - TRACE_KEEP_MS) this.samples.shift();
  }

  clear() {
    this.samples = [];
  }

  /** When (performance ms) the receiver handed over timestamp `rtp`, from the sample
   * nearest it; null before any. */
  at(rtp) {
    let best = null;
    let bestGap = Infinity;
    for (const s of this.samples) {
      const gap = Math.abs((rtp - s.rtp) | 0);
      if (gap < bestGap) {
        best = s;
        bestGap = gap;
      }
    }
    return best ? best.at + ((rtp - best.rtp) | 0) / 48 : null;
  }
}

/** How far (ms) either side of the receiver's account the true playout is searched
 * (Chromium's gap was seen at -100 ms after the box's output stalled). */
export const MATCH_RANGE_MS = 150;
/** The search's steps (ms): coarse over the whole range, then fine around the best. */
export const MATCH_COARSE_MS = 2.5;
export const MATCH_FINE_MS = 0.25;
/** A match counts only this well correlated (Pearson's r)... */
export const MATCH_MIN_R = 0.8;
/** ...over at least this many levels (0.5 s)... */
export const MATCH_MIN_POINTS = 200;
/** ...of a mix that moves at least this much (dB, standard deviation): a steady tone
 * matches anywhere. */
export const MATCH_MIN_SPREAD_DB = 0.25;
/** Levels are compared smoothed over this many either side (±5 ms): steady chords
 * beat at tens of Hz (330, 440 and 660 Hz repeat every 9.1 ms), and at 2.5 ms that
 * ripple would match itself a few periods off. */
export const MATCH_SMOOTH = 2;
/** The best match must beat any lag more than MATCH_RIVAL_MS away by this much (r):
 * a mix that repeats matches itself a period off. */
export const MATCH_MARGIN = 0.03;
export const MATCH_RIVAL_MS = 15;
/** Played levels kept (ms). */
const PLAYED_KEEP_MS = 4000;

/** A box envelope code (0–255) as dB: 0 is -90 dBFS, 255 is 0 dBFS. */
export function codeToDb(code) {
  return (code * 90) / 255 - 90;
}

/** Parses an `envelope` message's hex levels into codes. */
export function parseLevels(hex) {
  const out = [];
  for (let i = 0; i + 1 < hex.length; i += 2) out.push(parseInt(hex.slice(i, i + 2), 16));
  return out;
}

/** Levels of what the page played: [box-clock ms, dB], oldest first, the last 4 s. */
export class PlayedLevels {
  constructor() {
    this.points = [];
  }

  add(boxMs, db) {
    for (let i = 0; i < boxMs.length; i++) this.points.push([boxMs[i], db[i]]);
    const last = this.points.length ? this.points[this.points.length - 1][0] : 0;
    let drop = 0;
    while (drop < this.points.length && this.points[drop][0] < last - PLAYED_KEEP_MS) drop++;
    if (drop) this.points.splice(0, drop);
  }
}

/**
 * How much later (ms) than `predict` says the phone really plays its return mix, from
 * the box's levels of the mix and the levels the phone played; null unless they match
 * well. `box`: { rtp, step, codes } (the first level's RTP timestamp, frames per
 * level); `predict(rtp)`: the box-clock ms the page believes it plays timestamp `rtp`
 * (its receiver's account); `played`: [box-clock ms, dB] in time order.
 */
export function matchLevels(box, predict, played, why = {}) {
  if (!box.codes.length || played.length < 2) return null;
  const boxDb = smooth(box.codes.map(codeToDb));
  played = smoothPoints(played);
  const mean = boxDb.reduce((a, b) => a + b, 0) / boxDb.length;
  const spread = Math.sqrt(boxDb.reduce((a, b) => a + (b - mean) * (b - mean), 0) / boxDb.length);
  why.spread = Math.round(spread * 10) / 10;
  if (spread < MATCH_MIN_SPREAD_DB) return null;
  const at = boxDb.map((_, k) => predict((box.rtp + k * box.step) >>> 0));
  const scores = [];
  const search = (from, to, step, best) => {
    for (let lag = from; lag <= to + 1e-9; lag += step) {
      const r = correlateAt(boxDb, at, lag, played);
      if (r && r.n >= MATCH_MIN_POINTS) {
        scores.push([lag, r.r]);
        if (!best || r.r > best.r) best = { lag, r: r.r };
      }
    }
    return best;
  };
  const coarse = search(-MATCH_RANGE_MS, MATCH_RANGE_MS, MATCH_COARSE_MS, null);
  if (!coarse) return null;
  // A repeating mix matches itself at more than one lag: then it says nothing.
  const rival = scores.filter(([lag]) => Math.abs(lag - coarse.lag) > MATCH_RIVAL_MS).reduce((m, [, r]) => Math.max(m, r), -1);
  Object.assign(why, { lag: coarse.lag, r: Math.round(coarse.r * 1000) / 1000, rival: Math.round(rival * 1000) / 1000 });
  if (coarse.r - rival < MATCH_MARGIN) return null;
  const best = search(coarse.lag - MATCH_COARSE_MS, coarse.lag + MATCH_COARSE_MS, MATCH_FINE_MS, coarse);
  if (best.r < MATCH_MIN_R) return null;
  return { lagMs: Math.round(best.lag * 100) / 100, r: best.r };
}

/** A centred moving average over MATCH_SMOOTH levels either side (symmetric: it
 * moves no edge in time). */
function smooth(db) {
  const out = [];
  for (let k = 0; k < db.length; k++) {
    const from = Math.max(0, k - MATCH_SMOOTH);
    const to = Math.min(db.length - 1, k + MATCH_SMOOTH);
    let sum = 0;
    for (let i = from; i <= to; i++) sum += db[i];
    out.push(sum / (to - from + 1));
  }
  return out;
}

/** The same for the played [time, dB] points. */
function smoothPoints(points) {
  const db = smooth(points.map((p) => p[1]));
  return points.map((p, k) => [p[0], db[k]]);
}

/** Pearson's r between the box's levels and the played levels `lag` ms after the
 * predicted times (played levels interpolated), over the levels both have. */
function correlateAt(boxDb, at, lag, played) {
  let j = 0;
  let n = 0;
  let sx = 0;
  let sy = 0;
  let sxx = 0;
  let syy = 0;
  let sxy = 0;
  for (let k = 0; k < boxDb.length; k++) {
    const t = at[k] + lag;
    while (j + 1 < played.length && played[j + 1][0] <= t) j++;
    if (j + 1 >= played.length || played[j][0] > t) continue;
    const [t0, y0] = played[j];
    const [t1, y1] = played[j + 1];
    if (t1 - t0 > 10) continue;
    const y = y0 + ((t - t0) / (t1 - t0)) * (y1 - y0);
    const x = boxDb[k];
    n += 1;
    sx += x;
    sy += y;
    sxx += x * x;
    syy += y * y;
    sxy += x * y;
  }
  if (n < 2) return null;
  const cov = sxy - (sx * sy) / n;
  const vx = sxx - (sx * sx) / n;
  const vy = syy - (sy * sy) / n;
  if (vx <= 0 || vy <= 0) return null;
  return { r: cov / Math.sqrt(vx * vy), n };
}

/** The correction the page applies: the median of the last few matches, once at least
 * AGREE of them lie within AGREE_MS of it (one wild match, or a mix that matches
 * itself a period off now and then, moves nothing); until then the last agreed value
 * (0 at first). */
export const AGREE = 3;
export const AGREE_MS = 2.5;

export class PlayoutCorrection {
  constructor(keep = 5) {
    this.keep = keep;
    this.lags = [];
    this.agreed = 0;
  }

  add(lagMs) {
    this.lags.push(lagMs);
    if (this.lags.length > this.keep) this.lags.shift();
    const s = [...this.lags].sort((a, b) => a - b);
    const median = s[Math.floor(s.length / 2)];
    if (s.filter((l) => Math.abs(l - median) <= AGREE_MS).length >= AGREE) this.agreed = median;
  }

  /** ms to add to the receiver's account. */
  value() {
    return this.agreed;
  }

  clear() {
    this.lags = [];
    this.agreed = 0;
  }
}

/** Song clocks kept: each maps the return mix from its RTP timestamp on, until the
 * next one's. */
export const SONG_CLOCKS_KEPT = 8;

/**
 * The box's `song_clock` messages, newest last. A message says which song frame the
 * return mix carries at one RTP timestamp, and it comes as soon as the mapping changes
 * (a seek, a pause, a new lead); this phone still plays what was sent before that for
 * its whole playout delay. So the audio it plays is read with the clock that was true
 * when that audio was sent: the newest one whose timestamp it has reached.
 */
export class SongClocks {
  constructor(keep = SONG_CLOCKS_KEPT) {
    this.keep = keep;
    this.clocks = [];
  }

  add(clock) {
    this.clocks.push(clock);
    if (this.clocks.length > this.keep) this.clocks.shift();
  }

  clear() {
    this.clocks = [];
  }

  /** The newest clock, or null. */
  latest() {
    return this.clocks.length ? this.clocks[this.clocks.length - 1] : null;
  }

  /** The clock for the audio at RTP timestamp `rtp` (32-bit, wrapping): the newest one
   * at or before it, else the oldest kept (null when none). */
  at(rtp) {
    for (let k = this.clocks.length - 1; k >= 0; k--) {
      if (((rtp - this.clocks[k].rtp) | 0) >= 0) return this.clocks[k];
    }
    return this.clocks.length ? this.clocks[0] : null;
  }
}
