// The phone's side of docs/protocol.md (version 1), pure: message building and reading,
// what a box code or goodbye means for the page, the Opus parameters of the offer, and
// when to try again. No DOM, no WebSocket, no timers: unit-tested under node
// (web/test/protocol.test.js) and shared by the phone page, and later the host page
// and the venue screen.

/** The protocol version this page speaks. */
export const PROTOCOL_VERSION = 1;

/** Longest name the box accepts, in characters after trimming (protocol: 1–32). */
export const MAX_NAME_CHARS = 32;

/** Refusals by the box after which retrying cannot help (protocol.md, error codes). */
export const FATAL_CODES = new Set(['version', 'wrong_pin', 'room_full', 'too_large', 'bad_sdp', 'rate_limited']);

/** Opus parameters forced into the offer: in-band FEC (the box conceals losses with
 * it), no DTX (silence gaps would look like losses to the jitter buffer), a stereo
 * return mix, a mono mic and 10 ms packets allowed. */
export const OPUS_FMTP = [
  ['useinbandfec', '1'],
  ['usedtx', '0'],
  ['stereo', '1'],
  ['sprop-stereo', '0'],
  ['minptime', '10'],
];

/** How long the box keeps a lost phone's place by default (room.rejoin_grace_ms); the
 * page retries fast for this long, then backs off. */
export const REJOIN_GRACE_MS = 30000;

/** First retry after the link broke, ms: at once, nearly (a Wi-Fi blip is short). */
export const RETRY_FIRST_MS = 250;
/** Retry period while the box still keeps our place, ms: the phone is back on stage
 * within about this long after its network returns. */
export const RETRY_IN_GRACE_MS = 1000;
/** Longest retry delay after the grace, ms: a box restarting after a power cut is back
 * within seconds, and a phone should not wait long after it is. */
export const RETRY_MAX_MS = 10000;

/** A display name as the box will accept it, or an error sentence. */
export function checkName(raw) {
  const name = String(raw == null ? '' : raw).trim();
  if (!name) return { error: 'Type your name first.' };
  if (Array.from(name).length > MAX_NAME_CHARS) return { error: `At most ${MAX_NAME_CHARS} characters.` };
  return { name };
}

/** Whether `t` looks like a session token (32 hex digits). */
export function isToken(t) {
  return typeof t === 'string' && /^[0-9a-f]{32}$/i.test(t);
}

/** The `join` message; the token (from an earlier welcome) asks for the same place. */
export function joinMessage({ name, role, pin, token }) {
  const msg = { type: 'join', v: PROTOCOL_VERSION, name, role };
  if (pin) msg.pin = pin;
  if (isToken(token)) msg.token = token;
  return msg;
}

/** The `mix` message: only the fields given (numbers 0–1) are sent, and only those
 * change on the box. Null when there is nothing valid to send. */
export function mixMessage({ monitor, reverb } = {}) {
  const msg = { type: 'mix' };
  const unit = (v) => typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= 1;
  if (unit(monitor)) msg.monitor = monitor;
  if (unit(reverb)) msg.reverb = reverb;
  return Object.keys(msg).length > 1 ? msg : null;
}

/** Parses one frame from the box: an object with a string `type`, or null. */
export function parseMessage(text) {
  let msg;
  try {
    msg = JSON.parse(text);
  } catch (_) {
    return null;
  }
  if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.type !== 'string') return null;
  return msg;
}

/** What a `welcome` says, checked: { peer, token, slot, rejoined, mix } (mix only for
 * a singer, and only numbers 0–1). */
export function readWelcome(msg) {
  const unit = (v) => (typeof v === 'number' && v >= 0 && v <= 1 ? v : null);
  const mix = msg.mix && typeof msg.mix === 'object'
    ? { monitor: unit(msg.mix.monitor), reverb: unit(msg.mix.reverb) }
    : null;
  return {
    peer: typeof msg.peer === 'string' ? msg.peer : null,
    token: isToken(msg.token) ? msg.token : null,
    slot: typeof msg.slot === 'string' ? msg.slot : null,
    rejoined: msg.rejoined === true,
    mix,
  };
}

/** What the page does with an `error` from the box: 'stop' (a refusal retrying cannot
 * fix), 'retry' (setting up failed before any answer), or 'note' (just log it). */
export function errorAction(code, answered) {
  if (FATAL_CODES.has(code)) return 'stop';
  if (code === 'internal' && !answered) return 'retry';
  return 'note';
}

/** What the page does with a `bye`: 'done' (our own leave), 'stop' (never come back by
 * ourselves: the host removed us, or another connection took our place), or 'rejoin'
 * (the box stopped, or stopped hearing us: come back with the token). */
export function byeAction(reason) {
  switch (reason) {
    case 'left':
      return 'done';
    case 'kicked':
    case 'replaced':
      return 'stop';
    default:
      return 'rejoin';
  }
}

/** Delay before retry number `failures` (0 = the first), `lostForMs` after the link
 * broke: fast while the box keeps our place, then doubling up to RETRY_MAX_MS. */
export function retryDelay(failures, lostForMs, graceMs = REJOIN_GRACE_MS) {
  if (failures <= 0) return RETRY_FIRST_MS;
  if (lostForMs < graceMs) return RETRY_IN_GRACE_MS;
  const after = Math.max(0, failures - Math.ceil(graceMs / RETRY_IN_GRACE_MS));
  return Math.min(RETRY_MAX_MS, RETRY_IN_GRACE_MS * 2 ** Math.min(after + 1, 8));
}

/** The state of a peer connection from its two state fields: 'failed', 'connected',
 * 'disconnected' or 'connecting' (older Safari has no connectionState). */
export function linkState(connectionState, iceConnectionState) {
  const conn = connectionState;
  const ice = iceConnectionState;
  if (conn === 'failed' || ice === 'failed') return 'failed';
  if (conn === 'connected' || (!conn && (ice === 'connected' || ice === 'completed'))) return 'connected';
  if (conn === 'disconnected' || ice === 'disconnected') return 'disconnected';
  return 'connecting';
}

/** Adds the `OPUS_FMTP` parameters to every Opus fmtp line of an SDP, keeping the
 * other parameters and their order, replacing rather than duplicating. */
export function mungeOpus(sdp) {
  const eol = sdp.indexOf('\r\n') >= 0 ? '\r\n' : '\n';
  const lines = sdp.split(eol);
  const pts = [];
  for (const line of lines) {
    const m = /^a=rtpmap:(\d+) opus\/48000\/2\s*$/i.exec(line);
    if (m) pts.push(m[1]);
  }
  if (!pts.length) return sdp;
  const seen = new Set();
  const out = lines.map((line) => {
    const m = /^a=fmtp:(\d+) ?(.*)$/.exec(line);
    if (!m || pts.indexOf(m[1]) < 0) return line;
    seen.add(m[1]);
    return `a=fmtp:${m[1]} ${mergeFmtp(m[2])}`;
  });
  for (const pt of pts) {
    if (seen.has(pt)) continue;
    const at = out.findIndex((l) => l.toLowerCase().startsWith(`a=rtpmap:${pt} `));
    out.splice(at + 1, 0, `a=fmtp:${pt} ${mergeFmtp('')}`);
  }
  return out.join(eol);
}

/** One fmtp parameter list with the `OPUS_FMTP` values set (first spelling kept). */
export function mergeFmtp(params) {
  const map = new Map();
  for (const part of params.split(';')) {
    const item = part.trim();
    if (!item) continue;
    const eq = item.indexOf('=');
    const key = (eq < 0 ? item : item.slice(0, eq)).trim();
    const value = eq < 0 ? null : item.slice(eq + 1).trim();
    if (!map.has(key.toLowerCase())) map.set(key.toLowerCase(), [key, value]);
  }
  for (const [key, value] of OPUS_FMTP) map.set(key, [key, value]);
  return Array.from(map.values(), ([k, v]) => (v === null ? k : `${k}=${v}`)).join(';');
}

/** The room list as the page shows it: singers first (by slot), then listeners; each
 * row { peer, name, me, singer, slot, state, detail, warn, level_db }. */
export function roomRows(peers, myPeer) {
  const list = (Array.isArray(peers) ? peers : []).filter((p) => p && typeof p.peer === 'string');
  const rank = (p) => (p.role === 'singer' ? 0 : 1);
  list.sort((a, b) => rank(a) - rank(b) || String(a.slot || '').localeCompare(String(b.slot || '')));
  return list.map((p) => {
    const singer = p.role === 'singer';
    let detail;
    if (p.state && p.state !== 'live') detail = p.state;
    else if (!singer) detail = 'listening';
    else {
      detail = typeof p.delay_ms === 'number' ? `${Math.round(p.delay_ms)} ms` : '\u2013';
      if (typeof p.loss_pct === 'number' && p.loss_pct >= 1) detail += ` \u00b7 ${Math.round(p.loss_pct)} % lost`;
    }
    return {
      peer: p.peer,
      name: String(p.name || '?'),
      me: p.peer === myPeer,
      singer,
      slot: singer && typeof p.slot === 'string' ? p.slot : null,
      state: p.state || 'live',
      detail,
      warn: (p.state && p.state !== 'live') || p.loss_pct >= 5,
      level_db: p.level_db,
    };
  });
}
