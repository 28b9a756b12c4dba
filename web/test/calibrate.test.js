// Unit tests of the round-trip calibration's analysis (web/calibrate.js).
import test from 'node:test';
import assert from 'node:assert/strict';

import { CHIRPS, CHIRP_EVERY_S, correlate, fft, makeChirp, outputLatencyOf, roundTrip } from '../calibrate.js';

const RATE = 48000;

/** A deterministic noise source (so a failure repeats). */
function noise(seed) {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 4294967296 - 0.5;
  };
}

/**
 * What a microphone records: the chirps scheduled at `starts` (context frames), back
 * after `delayMs` at `gain`, a reflection `echoMs` later at `echoGain`, room noise at
 * `noiseLevel`, recording from context frame `from`. Returns { recorded, from }.
 */
function recording({ starts, delayMs, gain = 0.2, echoMs = 4, echoGain = 0.1, noiseLevel = 0.02, from = 1000, jitterMs = [] }) {
  const chirp = makeChirp(RATE);
  const end = starts[starts.length - 1] + RATE;
  const recorded = new Float32Array(end - from);
  const rnd = noise(7);
  for (let i = 0; i < recorded.length; i++) recorded[i] = noiseLevel * 2 * rnd();
  starts.forEach((start, n) => {
    const delay = delayMs + (jitterMs[n] || 0);
    for (const [ms, g] of [[delay, gain], [delay + echoMs, echoGain]]) {
      const at = start - from + Math.round((ms / 1000) * RATE);
      for (let i = 0; i < chirp.length; i++) recorded[at + i] += g * chirp[i];
    }
  });
  return { recorded, from, chirp };
}

function chirpStarts(first) {
  return Array.from({ length: CHIRPS }, (_, n) => first + Math.round(n * CHIRP_EVERY_S * RATE));
}

test('the FFT and its inverse give back the signal', () => {
  const re = Float64Array.from({ length: 64 }, (_, i) => Math.sin(i) + (i % 5));
  const im = new Float64Array(64);
  const orig = Float64Array.from(re);
  fft(re, im);
  fft(re, im, true);
  for (let i = 0; i < 64; i++) assert.ok(Math.abs(re[i] / 64 - orig[i]) < 1e-9);
});

test('the correlation peaks where the template starts', () => {
  const chirp = makeChirp(RATE);
  const signal = new Float32Array(8000);
  signal.set(chirp, 1234);
  const corr = correlate(signal, chirp, 4000);
  let best = 0;
  for (let k = 0; k < corr.length; k++) if (corr[k] > corr[best]) best = k;
  assert.equal(best, 1234);
});

test('a 45 ms round trip is found within a sample, through noise and a reflection', () => {
  const starts = chirpStarts(24000);
  const { recorded, from, chirp } = recording({ starts, delayMs: 45 });
  const r = roundTrip(recorded, from, starts, chirp, RATE);
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.ok(Math.abs(r.ms - 45) <= 0.05, `found ${r.ms} ms`);
  assert.equal(r.found, CHIRPS);
});

test('a direct sound weaker than its reflection still sets the round trip', () => {
  const starts = chirpStarts(24000);
  const { recorded, from, chirp } = recording({ starts, delayMs: 120, gain: 0.1, echoMs: 6, echoGain: 0.15 });
  const r = roundTrip(recorded, from, starts, chirp, RATE);
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.ok(Math.abs(r.ms - 120) <= 0.05, `found ${r.ms} ms`);
});

test('one chirp lost in a knock does not move the result; chirps that disagree fail', () => {
  const starts = chirpStarts(24000);
  // One chirp 30 ms off (a knock on the phone), the rest steady.
  let { recorded, from, chirp } = recording({ starts, delayMs: 60, jitterMs: [0, 30, 0, 0, 0] });
  let r = roundTrip(recorded, from, starts, chirp, RATE);
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.ok(Math.abs(r.ms - 60) <= 0.05, `found ${r.ms} ms`);
  assert.equal(r.found, CHIRPS - 1);
  // Every chirp somewhere else: no round trip to trust.
  ({ recorded, from, chirp } = recording({ starts, delayMs: 60, jitterMs: [0, 9, 18, 27, 36] }));
  r = roundTrip(recorded, from, starts, chirp, RATE);
  assert.deepEqual([r.ok, r.why], [false, 'unsteady']);
});

test('a microphone that hears no chirp (muted, or a headset) fails as quiet', () => {
  const starts = chirpStarts(24000);
  const { recorded, from, chirp } = recording({ starts, delayMs: 45, gain: 0, echoGain: 0, noiseLevel: 0.05 });
  const r = roundTrip(recorded, from, starts, chirp, RATE);
  assert.deepEqual([r.ok, r.why], [false, 'quiet']);
  // A recording that ends too soon is not read past its end.
  const short = roundTrip(recorded.subarray(0, 30000), from, starts, chirp, RATE);
  assert.equal(short.ok, false);
});

test('the output latency is what the browser said throughout, one wild reading aside', () => {
  // Readings that agree, and one far off taken last (the one a calibration that
  // read once would have kept).
  const readings = [5.3, 5.3, 5.1, 5.3, 5.2, 40];
  assert.ok(Math.abs(outputLatencyOf(readings) - 5.3) < 0.2, String(outputLatencyOf(readings)));
  assert.equal(outputLatencyOf([12]), 12);
  assert.equal(outputLatencyOf([]), 0);
});
