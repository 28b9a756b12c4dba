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

/** What the singer is told: in time, or how far off and which way. */
export function describeOffset(offsetMs) {
  if (offsetMs === null || !Number.isFinite(offsetMs)) return null;
  const ms = Math.round(Math.abs(offsetMs));
  if (ms <= 10) return `in time with the speakers (±${Math.max(1, ms)} ms)`;
  return offsetMs > 0 ? `${ms} ms behind the speakers` : `${ms} ms ahead of the speakers`;
}
