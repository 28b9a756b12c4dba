// Round-trip calibration (docs/sync.md): the phone plays short chirps from its own
// speaker and hears them with its own microphone (echo cancellation is off). The time
// from a chirp's place on the audio context's timeline to its place in what the
// microphone delivered is the phone's output latency plus its input latency plus the
// few centimetres of air: the one figure the box cannot see from the network. The box
// keeps it with the singer's rejoin token.
//
// Pure: no Web Audio, no DOM. The page (audio.js) plays the chirps, records the
// microphone with calibrate-tap.js, and hands both here.

/** The chirp: a linear sweep, ms. Long enough to rise above a loud room, short enough
 * that its echo off a wall a metre away does not blur its start. */
export const CHIRP_MS = 60;
/** Its band, Hz: phone speakers play little below 1 kHz, and a wide band gives a sharp
 * correlation peak. */
export const CHIRP_FROM_HZ = 1000;
export const CHIRP_TO_HZ = 7000;
/** Chirps per calibration, and the time between their starts, s: more than the
 * longest round trip and a chirp, so that no two chirps share a search window. */
export const CHIRPS = 5;
export const CHIRP_EVERY_S = 0.6;
/** The longest round trip searched, ms (Bluetooth headsets reach 300; beyond this the
 * phone is not usable for singing anyway). */
export const MAX_ROUND_TRIP_MS = 500;
/** A chirp counts when its correlation peak stands this far above the median of the
 * search window's magnitudes (a peak in noise stands about 4 to 6 above it). */
export const MIN_PEAK_RATIO = 12;
/** Chirps that must be found, and how far apart (ms) their round trips may lie. */
export const MIN_FOUND = 3;
export const MAX_SPREAD_MS = 2;
/** An earlier peak at least this share of the strongest is taken instead (the direct
 * sound may be weaker than a reflection off the hand holding the phone). */
const EARLIER_PEAK_SHARE = 0.6;
/** ...within this much before it, ms. */
const EARLIER_PEAK_MS = 15;

/** The chirp at `sampleRate`, Hann-windowed (so its ends do not click), peak 0.5. */
export function makeChirp(sampleRate) {
  const n = Math.round((CHIRP_MS / 1000) * sampleRate);
  const out = new Float32Array(n);
  const duration = n / sampleRate;
  const k = (CHIRP_TO_HZ - CHIRP_FROM_HZ) / duration;
  for (let i = 0; i < n; i++) {
    const t = i / sampleRate;
    const phase = 2 * Math.PI * (CHIRP_FROM_HZ * t + (k * t * t) / 2);
    const w = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1));
    out[i] = 0.5 * w * Math.sin(phase);
  }
  return out;
}

/** In-place radix-2 complex FFT (`re`, `im` of a power-of-two length); `inverse`
 * computes the unscaled inverse. Written here: the page loads no libraries. */
export function fft(re, im, inverse = false) {
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let len = 2; len <= n; len <<= 1) {
    const angle = ((inverse ? 2 : -2) * Math.PI) / len;
    const wr = Math.cos(angle);
    const wi = Math.sin(angle);
    for (let i = 0; i < n; i += len) {
      let cr = 1;
      let ci = 0;
      for (let k = 0; k < len / 2; k++) {
        const a = i + k;
        const b = a + len / 2;
        const tr = re[b] * cr - im[b] * ci;
        const ti = re[b] * ci + im[b] * cr;
        re[b] = re[a] - tr;
        im[b] = im[a] - ti;
        re[a] += tr;
        im[a] += ti;
        const nr = cr * wr - ci * wi;
        ci = cr * wi + ci * wr;
        cr = nr;
      }
    }
  }
}

/** The magnitude of the cross-correlation of `signal` with `template` at lags
 * 0..`lags` - 1 (the lag is where the template starts in the signal). */
export function correlate(signal, template, lags) {
  let n = 1;
  while (n < lags + template.length) n <<= 1;
  const sr = new Float64Array(n);
  const si = new Float64Array(n);
  const tr = new Float64Array(n);
  const ti = new Float64Array(n);
  sr.set(signal.subarray(0, Math.min(signal.length, n)));
  tr.set(template);
  fft(sr, si);
  fft(tr, ti);
  // Signal times the template's conjugate: correlation, not convolution.
  for (let k = 0; k < n; k++) {
    const r = sr[k] * tr[k] + si[k] * ti[k];
    const i = si[k] * tr[k] - sr[k] * ti[k];
    sr[k] = r;
    si[k] = i;
  }
  fft(sr, si, true);
  const out = new Float64Array(lags);
  for (let k = 0; k < lags; k++) out[k] = Math.abs(sr[k]) / n;
  return out;
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** What the browser said its output adds (ms), from what it said throughout a
 * calibration: the median, not one reading. Chromium over PulseAudio has said 5 ms
 * and 40 ms in the same kind of run: in one, the calibration's last reading and the
 * test singer's one reading disagreed, and the box took the phone's capture to be
 * about 35 ms off. 0 with no readings. */
export function outputLatencyOf(readings) {
  return readings.length ? median(readings) : 0;
}

/** Where one chirp came back: its lag in samples after `from`, or null with why. */
export function findChirp(recorded, from, chirp, sampleRate) {
  const lags = Math.round((MAX_ROUND_TRIP_MS / 1000) * sampleRate);
  if (from < 0 || from + lags + chirp.length > recorded.length) return { lag: null, why: 'short' };
  const window = recorded.subarray(from, from + lags + chirp.length);
  const corr = correlate(window, chirp, lags);
  let best = 0;
  for (let k = 1; k < lags; k++) if (corr[k] > corr[best]) best = k;
  const floor = median(corr);
  const ratio = floor > 0 ? corr[best] / floor : Infinity;
  if (!(ratio >= MIN_PEAK_RATIO)) return { lag: null, why: 'quiet', ratio };
  // The correlation of a chirp rings at its carrier around the peak: an earlier peak
  // is another arrival only when it is 1 ms or more before and the highest within
  // ±0.5 ms of itself.
  const ms = (x) => Math.round((x / 1000) * sampleRate);
  const earliest = Math.max(0, best - ms(EARLIER_PEAK_MS));
  for (let k = earliest; k <= best - ms(1); k++) {
    if (corr[k] < EARLIER_PEAK_SHARE * corr[best]) continue;
    let highest = true;
    for (let j = Math.max(0, k - ms(0.5)); j <= k + ms(0.5) && highest; j++) highest = corr[j] <= corr[k];
    if (highest) return { lag: k, ratio };
  }
  return { lag: best, ratio };
}

/**
 * The round trip from a recording: `recorded` is what the microphone delivered, its
 * first sample at context frame `recordedFrom`; `starts` are the context frames at
 * which the chirps were scheduled. Returns { ok: true, ms, spreadMs, found } or
 * { ok: false, why } ('quiet': no chirp heard above the room, 'unsteady': the chirps
 * disagree).
 */
export function roundTrip(recorded, recordedFrom, starts, chirp, sampleRate) {
  const found = [];
  for (const start of starts) {
    const r = findChirp(recorded, start - recordedFrom, chirp, sampleRate);
    if (r.lag !== null) found.push((r.lag * 1000) / sampleRate);
  }
  if (found.length < MIN_FOUND) return { ok: false, why: 'quiet', found: found.length };
  const ms = median(found);
  const near = found.filter((f) => Math.abs(f - ms) <= MAX_SPREAD_MS / 2);
  if (near.length < MIN_FOUND) {
    return { ok: false, why: 'unsteady', found: found.length, spreadMs: Math.max(...found) - Math.min(...found) };
  }
  const spreadMs = Math.max(...near) - Math.min(...near);
  return { ok: true, ms: Math.round(median(near) * 10) / 10, spreadMs, found: near.length };
}
