// Unit tests of the phone's half of playout sync (web/sync.js), under node's test runner.
import test from 'node:test';
import assert from 'node:assert/strict';

import { BoxClock, CLOCK_SAMPLES, MAX_EXTRA_MS, describeOffset, playoutReport, sourceTimeToPerf, steer } from '../sync.js';

test('the clock offset comes from the fastest recent round trip', () => {
  const c = new BoxClock();
  assert.equal(c.offset(), null);
  // The box is 5000 ms ahead. A slow round trip with a late answer would say 5040.
  c.add(100, 200, 5000 + 190);
  c.add(300, 304, 5000 + 302);
  c.add(500, 560, 5000 + 505);
  assert.equal(c.offset(), 5000);
  assert.equal(c.bestRtt(), 4);
  // Only the last CLOCK_SAMPLES count: the good one ages out.
  for (let k = 0; k < CLOCK_SAMPLES; k++) c.add(1000 + k * 100, 1010 + k * 100, 5000 + 1008 + k * 100);
  assert.equal(c.offset(), 5003);
  // Nonsense is ignored.
  c.add(10, 5, 1);
  c.add(10, 20, NaN);
  assert.equal(c.samples.length, CLOCK_SAMPLES);
});

test('a source time on the Date clock is moved to the performance clock', () => {
  const origin = 1_700_000_000_000;
  assert.equal(sourceTimeToPerf(origin + 1234.5, origin), 1234.5);
  assert.equal(sourceTimeToPerf(1234.5, origin), 1234.5);
});

test('the report names the timestamp and when it is heard on the box clock', () => {
  const origin = 1_700_000_000_000;
  const src = { rtpTimestamp: 4294967295, timestamp: origin + 10_000 };
  assert.deepEqual(playoutReport(src, origin, 12.5, 30, 2_000), {
    type: 'playout', rtp: 4294967295, at: 10_000 + 12.5 + 30 + 2_000, extra: 30,
  });
  assert.equal(playoutReport(src, origin, 0, 0, null), null, 'no clock yet');
  assert.equal(playoutReport(undefined, origin, 0, 0, 0), null, 'nothing played yet');
  assert.equal(playoutReport({ rtpTimestamp: 1 }, origin, 0, 0, 0), null);
});

test('steering takes most of the offset off the extra delay, within its range', () => {
  assert.equal(steer(50, 10), 42);
  assert.equal(steer(50, -10), 58);
  assert.equal(steer(50, 1), 50, 'inside the dead band');
  assert.equal(steer(5, 40), 0, 'never below zero');
  assert.equal(steer(MAX_EXTRA_MS, -100), MAX_EXTRA_MS);
  assert.equal(steer(50, NaN), 50);
  // A phone 60 ms early settles within a few reports.
  let extra = 0;
  const natural = -60;
  for (let k = 0; k < 6; k++) extra = steer(extra, natural + extra);
  assert.ok(Math.abs(natural + extra) <= 1.5, `${natural + extra}`);
});

test('the singer is told in words', () => {
  assert.equal(describeOffset(null), null);
  assert.equal(describeOffset(0.2), 'in time with the speakers (±1 ms)');
  assert.equal(describeOffset(-7.6), 'in time with the speakers (±8 ms)');
  assert.equal(describeOffset(42), '42 ms behind the speakers');
  assert.equal(describeOffset(-42), '42 ms ahead of the speakers');
});
