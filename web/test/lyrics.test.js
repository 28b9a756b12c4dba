// Unit tests of the lyrics timing (web/lyrics.js), under node's test runner.
import test from 'node:test';
import assert from 'node:assert/strict';

import { HOLD_MS, countAt, isMine, lyricAt } from '../lyrics.js';

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
