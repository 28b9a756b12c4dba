// Unit tests of the lyrics timing (web/lyrics.js), under node's test runner.
import test from 'node:test';
import assert from 'node:assert/strict';

import { HOLD_MS, JUMP_MS, SLACK_MS, SongClock, countAt, isMine, lyricAt } from '../lyrics.js';

const line = (start, end, words) => ({
  start_ms: start,
  end_ms: end,
  part: 'all',
  text: words.map((w) => w[1]).join(''),
  syllables: words.map(([at, text]) => ({ at_ms: at, text })),
});

const LINES = [
  line(1000, 2000, [[1000, 'Hel'], [1400, 'lo ']]),
  line(2500, 3000, [[2500, 'world']]),
  line(9000, 9500, [[9000, 'late']]),
];

test('a line is current from its start, to the millisecond', () => {
  assert.deepEqual(lyricAt(LINES, 999), { current: -1, next: 0, sung: 0 });
  assert.deepEqual(lyricAt(LINES, 1000), { current: 0, next: 1, sung: 1 });
  assert.deepEqual(lyricAt(LINES, 1400), { current: 0, next: 1, sung: 2 });
  assert.deepEqual(lyricAt(LINES, 2499), { current: 0, next: 1, sung: 2 });
  assert.deepEqual(lyricAt(LINES, 2500), { current: 1, next: 2, sung: 1 });
});

test('a line is held a while after its end, then the next is only announced', () => {
  assert.equal(lyricAt(LINES, 3000 + HOLD_MS).current, 1);
  assert.deepEqual(lyricAt(LINES, 3001 + HOLD_MS), { current: -1, next: 2, sung: 0 });
  assert.deepEqual(lyricAt(LINES, 20000), { current: -1, next: -1, sung: 0 });
  assert.deepEqual(lyricAt([], 5), { current: -1, next: -1, sung: 0 });
});

test('duet parts go to their slots', () => {
  assert.ok(isMine('all', 'B'));
  assert.ok(isMine('p1', 'A'));
  assert.ok(!isMine('p1', 'B'));
  assert.ok(isMine('p2', 'B'));
  assert.ok(isMine('p2', null), 'a listener sees every line as theirs');
});

test('the count-in counts down the beats before the song', () => {
  // Four beats over 2400 ms: 4 from -2400, 3 from -1800, 2 from -1200, 1 from -600.
  assert.equal(countAt(-2400, 2400, 4), 4);
  assert.equal(countAt(-1801, 2400, 4), 4);
  assert.equal(countAt(-1800, 2400, 4), 3);
  assert.equal(countAt(-601, 2400, 4), 2);
  assert.equal(countAt(-1, 2400, 4), 1);
  assert.equal(countAt(0, 2400, 4), null, 'the song has started');
  assert.equal(countAt(-2401, 2400, 4), null, 'before the count-in');
  assert.equal(countAt(-100, 0, 0), null, 'no count-in');
});

/** A box whose speakers are at `speakers(t)` (ms of song) at page time t, polled every
 * 150 ms with round trips `rtt(k)`, the position read `where(k)` (0 to 1) into each. */
function poll(clock, from, to, speakers, rtt, where = () => 0.5) {
  for (let k = 0, t = from; t < to; k += 1, t += 150) {
    const r = rtt(k);
    const read = t + where(k) * r;
    clock.reading({ positionMs: speakers(read), playing: true, generation: 1 }, t, t + r);
  }
}

test('the song clock keeps the reading with the shortest round trip', () => {
  const clock = new SongClock();
  // Round trips of 2 to 40 ms, each read anywhere within it: the clock stays within
  // half the best round trip (and the slack) of the speakers.
  const rtts = [30, 2, 40, 12, 25, 8, 33, 19];
  poll(clock, 0, 3000, (t) => t - 500, (k) => rtts[k % rtts.length], (k) => (k * 0.37) % 1);
  const error = clock.at(3100) - (3100 - 500);
  assert.ok(Math.abs(error) <= 1 + SLACK_MS, `${error}`);
});

test('the song clock follows speakers that stalled, though its best reading is older', () => {
  const clock = new SongClock();
  // The best reading (1 ms) comes first; the rest take 10 ms. Then the speakers stall
  // 70 ms (less than a jump): the screen's lines would stay 70 ms early for the rest
  // of the song.
  const speakers = (t) => (t < 2000 ? t : t - 70);
  poll(clock, 0, 4000, speakers, (k) => (k === 0 ? 1 : 10));
  assert.ok(70 < JUMP_MS);
  const error = clock.at(4000) - speakers(4000);
  assert.ok(Math.abs(error) <= 5 + SLACK_MS, `${error} ms off after the stall`);
});

test('the song clock jumps with a seek and holds a paused position exactly', () => {
  const clock = new SongClock();
  poll(clock, 0, 1000, (t) => t, () => 4);
  clock.reading({ positionMs: 60_000, playing: true, generation: 1 }, 1000, 1004);
  assert.ok(Math.abs(clock.at(1100) - 60_098) <= 1, `${clock.at(1100)}`);
  clock.reading({ positionMs: 60_200, playing: false, generation: 1 }, 1200, 1201);
  assert.equal(clock.at(5000), 60_200);
  clock.reading({ positionMs: 60_203, playing: false, generation: 1 }, 1300, 1350);
  assert.equal(clock.at(5000), 60_200, 'within the slack: the best reading stays');
  clock.reading(null, 1400, 1401);
  assert.equal(clock.at(5000), null);
});
