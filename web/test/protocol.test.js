// Unit tests of the page's pure protocol module, under node's own test runner:
//   node --test web/test
import test from 'node:test';
import assert from 'node:assert/strict';

import {
  PROTOCOL_VERSION,
  REJOIN_GRACE_MS,
  RETRY_FIRST_MS,
  RETRY_IN_GRACE_MS,
  RETRY_MAX_MS,
  byeAction,
  checkName,
  errorAction,
  isToken,
  joinMessage,
  linkState,
  mergeFmtp,
  mixMessage,
  mungeOpus,
  parseMessage,
  readWelcome,
  retryDelay,
  roomRows,
} from '../protocol.js';

const TOKEN = '000102030405060708090a0b0c0d0eff';

test('join carries the token only when it is one', () => {
  assert.deepEqual(joinMessage({ name: 'Ana', role: 'singer' }), { type: 'join', v: PROTOCOL_VERSION, name: 'Ana', role: 'singer' });
  assert.deepEqual(joinMessage({ name: 'Ana', role: 'singer', pin: '4711', token: TOKEN }), {
    type: 'join', v: 1, name: 'Ana', role: 'singer', pin: '4711', token: TOKEN,
  });
  assert.equal(joinMessage({ name: 'Ana', role: 'singer', token: 'p7' }).token, undefined);
  assert.equal(joinMessage({ name: 'Ana', role: 'singer', token: null }).token, undefined);
  assert.ok(isToken(TOKEN.toUpperCase()));
  assert.ok(!isToken(`${TOKEN}0`));
});

test('a mix message carries only the fields given, and only valid ones', () => {
  assert.deepEqual(mixMessage({ monitor: 0.5 }), { type: 'mix', monitor: 0.5 });
  assert.deepEqual(mixMessage({ reverb: 0 }), { type: 'mix', reverb: 0 });
  assert.deepEqual(mixMessage({ monitor: 1, reverb: 0.25 }), { type: 'mix', monitor: 1, reverb: 0.25 });
  assert.deepEqual(mixMessage({ monitor: 1.5, reverb: 0.25 }), { type: 'mix', reverb: 0.25 });
  assert.equal(mixMessage({ monitor: NaN }), null);
  assert.equal(mixMessage({}), null);
});

test('names are trimmed and limited to 32 characters', () => {
  assert.deepEqual(checkName('  Ana '), { name: 'Ana' });
  assert.ok(checkName('   ').error);
  assert.ok(checkName('x'.repeat(33)).error);
  // Characters, not UTF-16 units: 32 emoji are fine.
  assert.deepEqual(checkName('\u{1F3A4}'.repeat(32)), { name: '\u{1F3A4}'.repeat(32) });
});

test('only objects with a string type are messages', () => {
  assert.deepEqual(parseMessage('{"type":"pong","t":1}'), { type: 'pong', t: 1 });
  for (const bad of ['nope', '[1]', '{"type":5}', 'null', '"room"']) assert.equal(parseMessage(bad), null, bad);
});

test('a welcome is read defensively', () => {
  assert.deepEqual(
    readWelcome({ type: 'welcome', peer: 'p3', token: TOKEN, slot: 'A', rejoined: true, mix: { monitor: 0.4, reverb: 7 } }),
    { peer: 'p3', token: TOKEN, slot: 'A', rejoined: true, mix: { monitor: 0.4, reverb: null } },
  );
  assert.deepEqual(readWelcome({ type: 'welcome', peer: 'p4', token: 'short', slot: null }), {
    peer: 'p4', token: null, slot: null, rejoined: false, mix: null,
  });
});

test('goodbyes: kicked and replaced stop, shutdown and timeout rejoin', () => {
  assert.equal(byeAction('left'), 'done');
  assert.equal(byeAction('kicked'), 'stop');
  assert.equal(byeAction('replaced'), 'stop');
  assert.equal(byeAction('shutdown'), 'rejoin');
  assert.equal(byeAction('timeout'), 'rejoin');
  assert.equal(byeAction('something-new'), 'rejoin');
});

test('errors: refusals stop, an early internal error retries, the rest is noted', () => {
  for (const code of ['version', 'wrong_pin', 'room_full', 'too_large', 'bad_sdp', 'rate_limited']) assert.equal(errorAction(code, false), 'stop');
  assert.equal(errorAction('internal', false), 'retry');
  assert.equal(errorAction('internal', true), 'note');
  assert.equal(errorAction('bad_field', false), 'note');
});

test('retries are fast while the box keeps the place, then back off to a ceiling', () => {
  assert.equal(retryDelay(0, 0), RETRY_FIRST_MS);
  assert.equal(retryDelay(5, 5000), RETRY_IN_GRACE_MS);
  assert.equal(retryDelay(29, REJOIN_GRACE_MS - 1), RETRY_IN_GRACE_MS);
  let last = 0;
  for (let k = 30; k < 45; k++) {
    const d = retryDelay(k, REJOIN_GRACE_MS + k * 1000);
    assert.ok(d >= last && d <= RETRY_MAX_MS, `retry ${k}: ${d}`);
    last = d;
  }
  assert.equal(last, RETRY_MAX_MS);
});

test('link state folds the two state fields', () => {
  assert.equal(linkState('connected', 'connected'), 'connected');
  assert.equal(linkState(undefined, 'completed'), 'connected');
  assert.equal(linkState('connecting', 'failed'), 'failed');
  assert.equal(linkState('disconnected', 'connected'), 'disconnected');
  assert.equal(linkState('new', 'checking'), 'connecting');
});

test('the Opus fmtp gets our parameters, once, on every Opus payload type', () => {
  const sdp = [
    'v=0',
    'm=audio 9 UDP/TLS/RTP/SAVPF 109 0',
    'a=rtpmap:109 opus/48000/2',
    'a=fmtp:109 maxplaybackrate=48000;stereo=0;useinbandfec=1',
    'a=rtpmap:0 PCMU/8000',
    '',
  ].join('\r\n');
  const out = mungeOpus(sdp);
  assert.match(out, /a=fmtp:109 maxplaybackrate=48000;stereo=1;useinbandfec=1;usedtx=0;sprop-stereo=0;minptime=10\r\n/);
  assert.equal(out.match(/a=fmtp:109/g).length, 1);
  // Without an fmtp line one is added after the rtpmap.
  const bare = 'v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:111 opus/48000/2\na=sendrecv\n';
  assert.match(mungeOpus(bare), /a=rtpmap:111 opus\/48000\/2\na=fmtp:111 useinbandfec=1;usedtx=0;stereo=1;sprop-stereo=0;minptime=10\n/);
  // No Opus: untouched.
  assert.equal(mungeOpus('v=0\r\nm=audio 9 RTP/AVP 0\r\n'), 'v=0\r\nm=audio 9 RTP/AVP 0\r\n');
  // A parameter the browser spelt in capitals is set, in its place, not doubled.
  assert.equal(mergeFmtp('USEINBANDFEC=0; x=1'), 'useinbandfec=1;x=1;usedtx=0;stereo=1;sprop-stereo=0;minptime=10');
});

test('room rows: singers by slot first, states and loss shown', () => {
  const rows = roomRows([
    { peer: 'p9', name: 'Lia', role: 'listener', state: 'live' },
    { peer: 'p4', name: 'Ben', role: 'singer', slot: 'B', state: 'live', delay_ms: 7.4, loss_pct: 6, level_db: -12 },
    { peer: 'p2', name: 'Ana', role: 'singer', slot: 'A', state: 'reconnecting', delay_ms: 6, loss_pct: 0 },
    { name: 'no id' },
  ], 'p4');
  assert.deepEqual(rows.map((r) => [r.peer, r.slot, r.me, r.detail, r.warn]), [
    ['p2', 'A', false, 'reconnecting', true],
    ['p4', 'B', true, '7 ms \u00b7 6 % lost', true],
    ['p9', null, false, 'listening', false],
  ]);
});
