// Unit tests of the phone's half of playout sync (web/sync.js), under node's test runner.
import test from 'node:test';
import assert from 'node:assert/strict';

import { BoxClock, CLOCK_SAMPLES, FLOOR_MARGIN_MS, JitterFloor, MAX_EXTRA_MS, MAX_FLOOR_MS, SONG_CLOCKS_KEPT, SongClocks, describeOffset, playoutReport, sourceTimeToPerf, steer, wallClockReport } from '../sync.js';

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

test('the jitter floor holds the buffer where it grew to for the rest of the song', () => {
  // A NetEq-like buffer: its target is its own estimate or the floor, whichever is higher.
  const floor = new JitterFloor();
  let held = 0;
  // One stats poll: the target over the last second (under the floor then held).
  const poll = (own, key) => {
    const target = Math.max(own, held);
    held = floor.observe(target, key);
    return target;
  };
  assert.equal(poll(30, 1), 30);
  assert.equal(held, 0, "a song's first reading is not taken");
  assert.equal(poll(30, 1), 30);
  assert.equal(held, 30 - FLOOR_MARGIN_MS);
  // Late packets: the estimate grows to 210 ms; ten seconds on it would drain to 30.
  assert.equal(poll(210, 1), 210);
  for (let k = 0; k < 30; k++) poll(30, 1);
  assert.equal(held, 210 - FLOOR_MARGIN_MS, 'the drain is held off');
  assert.equal(poll(30, 1), 210 - FLOOR_MARGIN_MS, 'the target stays with the floor');
  // Fed its own floor back for a minute, it does not creep up.
  for (let k = 0; k < 60; k++) poll(30, 1);
  assert.equal(held, 210 - FLOOR_MARGIN_MS);
  // The next song, or none, lets it go: its first reading was held up by the last
  // song's floor, and is not taken.
  assert.equal(poll(30, 2), 210 - FLOOR_MARGIN_MS);
  assert.equal(held, 0);
  assert.equal(poll(30, 2), 30);
  assert.equal(held, 30 - FLOOR_MARGIN_MS);
  poll(80, null);
  assert.equal(poll(80, null), 80);
  assert.equal(held, 0);
  assert.equal(floor.observe(120, undefined), 0);
  // Never beyond what the lead can follow; nothing from a reading that is not one.
  floor.observe(0, 3);
  assert.equal(floor.observe(5000, 3), MAX_FLOOR_MS);
  assert.equal(floor.observe(NaN, 3), MAX_FLOOR_MS);
  assert.equal(new JitterFloor().observe(null, 3), 0);
});

test('the singer is told in words', () => {
  assert.equal(describeOffset(null), null);
  assert.equal(describeOffset(0.2), 'in time with the speakers (±1 ms)');
  assert.equal(describeOffset(-7.6), 'in time with the speakers (±8 ms)');
  assert.equal(describeOffset(42), '42 ms behind the speakers');
  assert.equal(describeOffset(-42), '42 ms ahead of the speakers');
});

import { MATCH_MIN_R, PlayedLevels, PlayoutCorrection, ReceiverTrace, codeToDb, matchLevels, parseLevels } from '../sync.js';

/** A mix with a beat: levels (codes) every 2.5 ms for 2 s. */
function beat(n) {
  const codes = [];
  for (let k = 0; k < n; k++) {
    const inBeat = (k % 200) < 12; // a 30 ms hit every 500 ms
    const wobble = Math.round(8 * Math.sin(k * 0.37) + 6 * Math.sin(k * 0.05));
    codes.push(Math.max(0, Math.min(255, (inBeat ? 230 : 170) + wobble)));
  }
  return codes;
}

test('the levels the phone played are found against the box\'s, within a level (2.5 ms)', () => {
  const codes = beat(800);
  const box = { rtp: 4294967000, step: 120, codes };
  // The page believes RTP r plays at 1000 ms + (r - box.rtp) / 48; really 13.7 ms later.
  const predict = (r) => 1000 + ((r - box.rtp) | 0) / 48;
  const truth = -97.3;
  const played = new PlayedLevels();
  // Played at 44.1 kHz blocks (110 frames, 2.494 ms), levels a few dB off and noisy.
  const times = [];
  const db = [];
  for (let t = 850; t < 1000 + 2000 + 30; t += 110 / 44.1) {
    // The block's level: the box's levels it overlaps, weighted by the overlap.
    const w = 110 / 44.1;
    let level = 0;
    for (let u = 0; u < 10; u++) {
      const k = Math.floor((t + ((u + 0.5) * w) / 10 - 1000 - truth) / 2.5);
      level += (k >= 0 && k < codes.length ? codeToDb(codes[k]) : -90) / 10;
    }
    times.push(t);
    db.push(level - 4 + 0.8 * Math.sin(t * 7.1));
  }
  played.add(times, db);
  const m = matchLevels(box, predict, played.points);
  assert.ok(m, 'a match');
  assert.ok(Math.abs(m.lagMs - truth) <= 1.5, `lag ${m.lagMs}`);
  assert.ok(m.r >= MATCH_MIN_R);
});

test('a jitter buffer draining within the window is followed by the receiver trace', () => {
  const codes = beat(800);
  const box = { rtp: 7000, step: 120, codes };
  // The receiver hands level k over at 1000 + 2.45 k ms (its buffer drains 40 ms over
  // the 2 s, a 2 % accelerate); the page plays it 13 ms after that.
  const handed = (k) => 1000 + 40 + 2.45 * k;
  const truth = 13;
  const trace = new ReceiverTrace();
  for (let k = 0; k <= 800; k += 50) trace.add({ rtpTimestamp: box.rtp + k * 120, timestamp: handed(k) }, 0);
  trace.add({ rtpTimestamp: box.rtp + 800 * 120, timestamp: handed(800) }, 0);
  assert.equal(trace.samples.length, 17, 'a repeated sample is kept once');
  const played = new PlayedLevels();
  const times = [];
  const db = [];
  for (let t = 900; t < 3100; t += 2.5) {
    const k = Math.floor((t - truth - 1040) / 2.45);
    times.push(t);
    db.push(k >= 0 && k < codes.length ? codeToDb(codes[k]) : -90);
  }
  played.add(times, db);
  const m = matchLevels(box, (r) => trace.at(r), played.points);
  assert.ok(m && Math.abs(m.lagMs - truth) <= 2.5, `lag ${m && m.lagMs}`);
  // The last sample alone predicts the first levels 40 ms early: no clean match there.
  const last = trace.samples[trace.samples.length - 1];
  const fromLast = matchLevels(box, (r) => last.at + ((r - last.rtp) | 0) / 48, played.points);
  assert.ok(!fromLast || Math.abs(fromLast.lagMs - truth) > 5, `from the last sample: ${fromLast && fromLast.lagMs}`);
});

test('the receiver trace keeps four seconds and starts again on a new stream', () => {
  const trace = new ReceiverTrace();
  assert.equal(trace.at(0), null);
  for (let k = 0; k < 60; k++) trace.add({ rtpTimestamp: k * 4800, timestamp: 1e12 + 1000 + 100 * k }, 1e12);
  assert.ok(trace.samples.length <= 41, `kept ${trace.samples.length}`);
  assert.equal(trace.at(59 * 4800 + 480), 1000 + 5900 + 10, 'from the Date clock, the nearest sample');
  trace.add({ rtpTimestamp: 123, timestamp: 1e12 + 7000 }, 1e12);
  assert.equal(trace.samples.length, 1, 'a new stream');
});

test('a steady mix, or too little played, matches nothing', () => {
  const steady = { rtp: 0, step: 120, codes: new Array(800).fill(200) };
  const played = new PlayedLevels();
  played.add([0, 2.5, 5], [-20, -20, -20]);
  assert.equal(matchLevels(steady, (r) => r / 48, played.points), null);
  const box = { rtp: 0, step: 120, codes: beat(800) };
  assert.equal(matchLevels(box, (r) => r / 48, played.points), null, 'too few points');
});

test('hex levels parse; the correction is the median of agreeing matches', () => {
  assert.deepEqual(parseLevels('00ff7f'), [0, 255, 127]);
  assert.equal(codeToDb(255), 0);
  assert.equal(codeToDb(0), -90);
  const c = new PlayoutCorrection(5);
  assert.equal(c.value(), 0);
  c.add(-37);
  assert.equal(c.value(), 0, 'one wild match moves nothing');
  c.add(12);
  c.add(13);
  assert.equal(c.value(), 0, 'two do not agree with the median yet');
  c.add(12.5);
  assert.equal(c.value(), 12.5, 'three within 2.5 ms of the median');
  c.add(2.75);
  c.add(2.75);
  assert.equal(c.value(), 12, 'a rival period does not take over by two');
  c.clear();
  assert.equal(c.value(), 0);
});

test('played levels keep the last four seconds', () => {
  const p = new PlayedLevels();
  const t = [];
  for (let k = 0; k < 2400; k++) t.push(k * 2.5);
  p.add(t, t.map(() => -20));
  assert.ok(p.points[0][0] >= 6000 - 4000 - 2.5 && p.points[0][0] <= 6000 - 4000 + 2.5, `${p.points[0][0]}`);
});

test('the audio a phone plays is read with the song clock that was true when it was sent', () => {
  const c = new SongClocks();
  assert.equal(c.at(0), null);
  // The song at lead 0 from RTP 1000; then the lead rises by 4800 frames (100 ms) from
  // RTP 49000 on: audio sent before that still carries the old mapping.
  c.add({ rtp: 1000, position: 0 });
  c.add({ rtp: 49_000, position: 48_000 + 4800 });
  assert.equal(c.latest().rtp, 49_000);
  assert.equal(c.at(48_999).position, 0, 'before the change: the old clock');
  assert.equal(c.at(49_000).position, 52_800, 'from the change on: the new one');
  assert.equal(c.at(500).rtp, 1000, 'older than every clock: the oldest');
  // Timestamps wrap at 2^32.
  const w = new SongClocks();
  w.add({ rtp: 0xffff_ff00, position: 0 });
  w.add({ rtp: 0x100, position: 512 });
  assert.equal(w.at(0xffff_fff0).position, 0);
  assert.equal(w.at(0x200).position, 512);
  // Only the newest few are kept.
  for (let k = 0; k < SONG_CLOCKS_KEPT + 3; k++) w.add({ rtp: 1000 * k, position: k });
  assert.equal(w.clocks.length, SONG_CLOCKS_KEPT);
  w.clear();
  assert.equal(w.latest(), null);
});

test('the wall clock is told once, and again when it moved half a millisecond', () => {
  const origin = 1780000000000.25;
  assert.equal(wallClockReport(null, origin, null), null, 'no clock yet');
  const first = wallClockReport(5000.5, origin, null);
  assert.deepEqual(first, { type: 'wall_clock', offset: 5000.5 - origin });
  assert.equal(wallClockReport(5000.7, origin, first.offset), null, 'within half a millisecond');
  assert.deepEqual(wallClockReport(5001.5, origin, first.offset), { type: 'wall_clock', offset: 5001.5 - origin });
});
