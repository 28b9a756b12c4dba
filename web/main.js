// duetbox phone page: wires the session (session.js), the audio (audio.js) and the
// view (view.js) to the page's controls, and exposes the read-only test hook.
//
// Served as static ES modules by the box: no build step, no request anywhere but the
// box (the venue may have no internet). Audio starts only inside the Join tap (iOS
// Safari and Chrome autoplay rules). Targets Android Chrome, iOS Safari 15+ and
// Firefox: ES2020, no AudioWorklet, no Array.prototype.at, no structuredClone.

import { PhoneAudio } from './audio.js';
import { checkName, mixMessage } from './protocol.js';
import { Session } from './session.js';
import { SongsPanel } from './songs.js';
import { LyricsView } from './lyrics.js';
import {
  BoxClock, JitterFloor, PlayedLevels, PlayoutCorrection, ReceiverTrace, SongClocks, describeOffset, matchLevels, parseLevels, playoutReport, sourceTimeToPerf, steer, wallClockReport,
} from './sync.js';
import { View, explain } from './view.js';

/** Minimum gap (ms) between `mix` messages while a slider is dragged. */
const MIX_SEND_MS = 100;
/** Period (ms) of the getStats() poll that feeds the delay figures. */
const STATS_INTERVAL_MS = 1000;
/** HTTPS port of the box (protocol.md: `wss://<box>:8443/ws`), for the "open the https
 * address" hint when the page was opened over plain http. */
const BOX_HTTPS_PORT = 8443;
/** localStorage keys. */
const KEY_NAME = 'duetbox.name';
const KEY_ROLE = 'duetbox.role';
const KEY_VOLUME = 'duetbox.volume';
const KEY_MONITOR = 'duetbox.monitor';
const KEY_REVERB = 'duetbox.reverb';

function load(key, fallback) {
  try {
    const v = window.localStorage.getItem(key);
    return v === null ? fallback : v;
  } catch (_) {
    return fallback; // Storage can be disabled (private mode, strict settings).
  }
}

function save(key, value) {
  try {
    window.localStorage.setItem(key, String(value));
  } catch (_) {
    // Not remembering is acceptable.
  }
}

function clampNumber(v, lo, hi, fallback) {
  const n = Number(v);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : fallback;
}

function sessionStore() {
  try {
    return window.sessionStorage;
  } catch (_) {
    return null;
  }
}

const view = new View(document);
const ui = view.ui;
const audio = new PhoneAudio(ui.audio);

const app = {
  state: 'idle',
  error: null,
  role: 'singer',
  /** The recordings of songs this phone sang in (the `recordings` message). */
  recordings: [],
  pin: '',
  peer: null,
  slot: null,
  everLive: false,
  rttMs: null,
  boxDelayMs: null,
  lossPct: null,
  jitterBufferMs: null,
  prevInbound: null,
  statsTimer: 0,
  meterFrame: 0,
  wakeLock: null,
  mixTimer: 0,
  mixSentAt: 0,
  song: null,
  syncTimers: [],
  /** The wall clock offset the box has from this connection (ms), or null. */
  wallSent: null,
  syncOffsetMs: null,
  leadMs: null,
  jitterTargetMs: 0,
  /** The floor held under the jitter buffer (ms, 0: none; `holdJitterFloor`). */
  jitterFloorMs: 0,
  syncHistory: [],
  matchR: null,
  matchWhy: [],
  /** This phone's speaker-to-mic round trip (ms) as the box keeps it, or null. */
  roundTripMs: null,
  /** The last calibration's full result (for the tests), or null. */
  calibration: null,
  calibrating: false,
};

function httpsAddress() {
  return `https://${location.hostname}:${BOX_HTTPS_PORT}/`;
}

function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

function defaultMessage(state) {
  switch (state) {
    case 'idle':
      return 'Type your name and tap Join.';
    case 'connecting':
      return 'Contacting the box\u2026';
    case 'live':
      if (app.role !== 'singer') return 'You\u2019re listening.';
      return audio.muted ? 'You\u2019re on stage, but your mic is muted.' : 'You\u2019re on stage. Sing!';
    case 'reconnecting':
      return 'Trying again\u2026';
    default:
      return '';
  }
}

/** Sets the page state and redraws the banner. `note` follows the explanation. */
function setState(state, code, note, detail) {
  app.state = state;
  if (code !== undefined) app.error = code;
  const parts = [];
  if (code) parts.push(explain(code, { role: app.role, pin: app.pin, detail }));
  if (note) parts.push(note);
  if (!parts.length) parts.push(defaultMessage(state));
  view.banner(state, parts.join(' '), code === 'insecure' ? httpsAddress() : null);
  view.leaveLabel(app.everLive);
}

/** Redraws the "retrying in N s" countdown while a reconnect is pending. */
function tickCountdown() {
  if (app.state !== 'reconnecting' || !session.retryAt) return;
  const s = Math.max(1, Math.ceil((session.retryAt - Date.now()) / 1000));
  view.message(`${explain(app.error, { role: app.role, pin: app.pin })} Retrying in ${s} s\u2026`);
}

function updateLatency() {
  view.latency(app);
}

/** The box's song clocks for this connection's return mix (its RTP timestamps). */
const songClocks = new SongClocks();

const session = new Session({
  url: wsUrl(),
  storage: sessionStore(),
  hooks: {
    state: (state, code, note) => setState(state, code, note),
    welcome: onWelcome,
    songs: (msg) => {
      if (msg.type === 'song_clock') songClocks.add({ ...msg, at: performance.now() });
      else if (msg.type === 'songs') songs.onSongs(msg);
      else if (msg.type === 'queued') songs.onQueued(msg);
      else if (msg.type === 'queue') {
        songs.onQueue(msg);
        lyrics.load(msg.song ? msg.song.song : null);
        lyrics.countIn = msg.song ? { ms: msg.song.count_in_ms, beats: msg.song.beats } : null;
        app.song = msg.song || null;
      }
      else if (msg.type === 'recordings') {
        app.recordings = Array.isArray(msg.recordings) ? msg.recordings : [];
        view.recordings(app.recordings);
      }
      else if (msg.type === 'error') songs.onRefused(msg.message || msg.code);
    },
    room: (peers, listeners) => {
      songs.onRoom(peers);
      const me = view.room(peers, app.peer, listeners);
      app.boxDelayMs = me && typeof me.delay_ms === 'number' && app.role === 'singer' ? me.delay_ms : null;
      app.lossPct = me && typeof me.loss_pct === 'number' && app.role === 'singer' ? me.loss_pct : null;
      app.oneWayMs = me && typeof me.one_way_ms === 'number' && app.role === 'singer' ? me.one_way_ms : null;
      updateLatency();
    },
    remote: (stream) => {
      audio.setRemote(stream);
      // A new receiver holds no floor.
      jitterFloor.clear();
      app.jitterFloorMs = 0;
      if (!stream) {
        stopStats();
        stopSync();
        app.boxDelayMs = null;
        app.lossPct = null;
        app.jitterBufferMs = null;
        app.prevInbound = null;
        view.room([], null, 0);
        updateLatency();
      }
    },
    rtt: (ms) => {
      app.rttMs = ms;
      updateLatency();
    },
    pong: (sent, received, now) => {
      boxClock.add(sent, received, now);
      const wall = wallClockReport(boxClock.offset(), performance.timeOrigin, app.wallSent);
      if (wall) {
        app.wallSent = wall.offset;
        session.send(wall);
      }
    },
    sync: onSync,
    envelope: onEnvelope,
    live: () => {
      app.everLive = true;
      view.leaveLabel(true);
      audio.resume();
      requestWakeLock();
      startStats();
      startSync();
    },
    stopped: onStopped,
    mic: async () => {
      if (app.role !== 'singer') return null;
      try {
        return await audio.openMic();
      } catch (err) {
        session.stop(err.code || 'mic_failed', err.detail);
        return null;
      }
    },
  },
});

const songs = new SongsPanel(document, (msg) => session.send(msg));
const lyrics = new LyricsView(document.getElementById('lyric-current'), document.getElementById('lyric-next'));

/**
 * The song position (ms) of what this phone is playing now, or null. The box said
 * which RTP timestamp of the return mix carries which song frame (`song_clock`); the
 * receiver says which timestamp it played last, and when. So the lyrics follow the
 * audio this phone plays, whatever its network and jitter buffer add. Without
 * `rtpTimestamp` (older browsers) the clock message's arrival stands in.
 */
function heardSongMs() {
  const song = app.song;
  const { source: src } = playingSource();
  const timed = src && typeof src.rtpTimestamp === 'number';
  const c = timed ? songClocks.at(src.rtpTimestamp) : songClocks.latest();
  if (!c || !song || c.generation !== song.generation) return null;
  if (!c.playing) return c.position / 48;
  if (timed) {
    // 32-bit wrap: the signed difference of the two timestamps.
    const delta = (src.rtpTimestamp - c.rtp) | 0;
    const since = performance.now() - sourceTimeToPerf(src.timestamp, performance.timeOrigin);
    const frames = c.position + delta + Math.max(0, since) * 48;
    // `timestamp` is when WebRTC handed the frame to the page's audio; the ear gets it
    // the page's output latency later.
    return frames / 48 - audio.outputDelayMs() - audio.appliedExtraMs() - correction.value();
  }
  return c.position / 48 + (performance.now() - c.at) - audio.outputDelayMs() - audio.appliedExtraMs();
}

function lyricsFrame() {
  lyrics.slot = app.slot;
  lyrics.show(app.state === 'live' ? heardSongMs() : null);
  requestAnimationFrame(lyricsFrame);
}
requestAnimationFrame(lyricsFrame);

audio.onMicEnded = () => {
  const l = session.link;
  if (l && !l.done) session.lost(l, 'mic_lost');
};

/** After a welcome: a rejoin got its place and settings back from the box; a fresh
 * join brings this phone's own slider settings. */
function onWelcome(w) {
  // A new session numbers its return mix afresh; the box sends its clock once the
  // media is up.
  songClocks.clear();
  app.peer = w.peer;
  app.slot = w.slot;
  app.roundTripMs = typeof w.round_trip_ms === 'number' ? w.round_trip_ms : null;
  view.calibration(app.roundTripMs, null);
  view.slot(w.slot);
  songs.joined(w.peer);
  if (app.role !== 'singer') return;
  if (w.rejoined && w.mix) {
    if (w.mix.monitor !== null) view.setSlider(ui.monitor, ui.monitorOut, Math.round(w.mix.monitor * 100));
    if (w.mix.reverb !== null) view.setSlider(ui.reverb, ui.reverbOut, Math.round(w.mix.reverb * 100));
  } else {
    sendMixNow();
  }
}

function onStopped(code, detail) {
  audio.closeMic();
  audio.stopSampling();
  stopMeter();
  releaseWakeLock();
  app.peer = null;
  view.slot(null);
  if (code === null) {
    app.error = null;
    setState('idle', null, 'You left the stage. Tap Join to come back.');
    return;
  }
  console.warn(`stopped: ${code}${detail ? ` (${detail})` : ''}`);
  setState('error', code, undefined, detail);
  if (code === 'wrong_pin') ui.pin.focus();
}

// ---------------------------------------------------------------------------------
// Stats, meter, wake lock
// ---------------------------------------------------------------------------------

async function collectStats() {
  const out = { inbound: null, outbound: null, pair: null, codec: null };
  const pc = session.peerConnection();
  if (!pc) return out;
  const report = await pc.getStats();
  const codecs = new Map();
  let transport = null;
  const pairs = new Map();
  report.forEach((r) => {
    if (r.type === 'inbound-rtp' && (r.kind || r.mediaType) === 'audio') {
      out.inbound = {
        packetsReceived: r.packetsReceived,
        packetsLost: r.packetsLost,
        jitter: r.jitter,
        jitterBufferDelay: r.jitterBufferDelay,
        jitterBufferEmittedCount: r.jitterBufferEmittedCount,
        jitterBufferTargetDelay: r.jitterBufferTargetDelay,
        totalSamplesReceived: r.totalSamplesReceived,
        concealedSamples: r.concealedSamples,
        audioLevel: r.audioLevel,
        totalAudioEnergy: r.totalAudioEnergy,
        codecId: r.codecId,
      };
    } else if (r.type === 'outbound-rtp' && (r.kind || r.mediaType) === 'audio') {
      out.outbound = { packetsSent: r.packetsSent, bytesSent: r.bytesSent, codecId: r.codecId };
    } else if (r.type === 'codec') {
      codecs.set(r.id, { mimeType: r.mimeType, sdpFmtpLine: r.sdpFmtpLine, channels: r.channels, payloadType: r.payloadType });
    } else if (r.type === 'transport') {
      transport = r;
    } else if (r.type === 'candidate-pair') {
      pairs.set(r.id, r);
    }
  });
  let pair = transport && transport.selectedCandidatePairId ? pairs.get(transport.selectedCandidatePairId) : null;
  if (!pair) pair = Array.from(pairs.values()).find((p) => p.nominated && p.state === 'succeeded') || null;
  if (pair) {
    out.pair = {
      currentRoundTripTime: pair.currentRoundTripTime,
      bytesReceived: pair.bytesReceived,
      bytesSent: pair.bytesSent,
    };
  }
  const codecId = (out.inbound && out.inbound.codecId) || (out.outbound && out.outbound.codecId);
  if (codecId && codecs.has(codecId)) out.codec = codecs.get(codecId);
  return out;
}

/** Playout sync (sync.js): the box's clock, measured once a second while live, and a
 * report of what this phone plays every SYNC_REPORT_MS; the box answers with how far
 * it is from the speakers, and the extra delay moves by most of that. */
const boxClock = new BoxClock();
const SYNC_PING_MS = 1000;
const SYNC_REPORT_MS = 500;
/** How often the page asks for the box's levels of its mix (the last 2 s each time; the box
 * answers twice a second at most): a shift of Chromium's gap is agreed three matches on. */
const SYNC_ENVELOPE_MS = 600;
/** What the page played, and how much later than its receiver says it plays. */
const played = new PlayedLevels();
const correction = new PlayoutCorrection();
/** Which timestamp the receiver handed over when, sampled with every batch of levels. */
const trace = new ReceiverTrace();

audio.onLevels = ({ times, db }) => {
  trace.add(playingSource().source, performance.timeOrigin);
  const offset = boxClock.offset();
  if (offset === null) return;
  played.add(times.map((t) => audio.heardAt(t) + offset), db);
};

/** The receiver's account of when (box-clock ms) the page's audio plays RTP timestamp
 * `rtp` before the sync delay (the levels are tapped before it), or null: the trace
 * of its synchronization source and the output latency. */
function receiverPredictor() {
  const offset = boxClock.offset();
  if (offset === null || !trace.samples.length) return null;
  const output = audio.outputDelayMs();
  return (rtp) => trace.at(rtp) + output + offset;
}

function onEnvelope(msg) {
  const predict = receiverPredictor();
  if (!predict || audio.playback !== 'webaudio') return;
  const why = {};
  const m = matchLevels({ rtp: msg.rtp >>> 0, step: msg.step, codes: parseLevels(msg.levels) }, predict, played.points, why);
  app.matchWhy.push(why);
  if (app.matchWhy.length > 20) app.matchWhy.shift();
  if (m) {
    correction.add(m.lagMs);
    app.matchR = m.r;
  }
}

function startSync() {
  stopSync();
  // A new connection: the box keeps the wall clock per connection.
  app.wallSent = null;
  // A quick burst first, so the first reports have a clock to go by.
  for (let k = 0; k < 5; k++) app.syncTimers.push(setTimeout(() => session.send({ type: 'ping', t: performance.now() }), 100 * k));
  app.syncTimers.push(setInterval(() => session.send({ type: 'ping', t: performance.now() }), SYNC_PING_MS));
  app.syncTimers.push(setInterval(reportPlayout, SYNC_REPORT_MS));
  app.syncTimers.push(setInterval(() => session.send({ type: 'envelope' }), SYNC_ENVELOPE_MS));
}

function stopSync() {
  for (const t of app.syncTimers) clearInterval(t);
  app.syncTimers = [];
  app.syncOffsetMs = null;
  correction.clear();
  trace.clear();
}

function playingSource() {
  const pc = session.peerConnection();
  const receiver = pc && pc.getReceivers().find((r) => r.track && r.track.kind === 'audio');
  const sources = receiver && receiver.getSynchronizationSources ? receiver.getSynchronizationSources() : [];
  return { receiver, source: sources && sources[0] };
}

function reportPlayout() {
  if (app.state !== 'live') return;
  const { source } = playingSource();
  trace.add(source, performance.timeOrigin);
  const extra = audio.playback === 'webaudio' ? audio.appliedExtraMs() : app.jitterTargetMs;
  // What the levels matched adds to the receiver's account (0 until they match).
  const msg = playoutReport(source, performance.timeOrigin, audio.outputDelayMs() + correction.value(), extra, boxClock.offset());
  if (msg) session.send(msg);
}

function onSync(msg) {
  app.syncOffsetMs = msg.offset_ms;
  app.leadMs = msg.lead_ms;
  const extra = steer(audio.extraMs, msg.offset_ms);
  // The last minute of the loop, for the test hook.
  const jitterBuffer = typeof app.jitterBufferMs === 'number' ? Math.round(app.jitterBufferMs * 10) / 10 : null;
  app.syncHistory.push([Math.round(performance.now()), msg.offset_ms, Math.round(audio.extraMs * 10) / 10, msg.lead_ms, correction.value(), jitterBuffer, app.jitterFloorMs]);
  if (app.syncHistory.length > 120) app.syncHistory.shift();
  if (!audio.setExtraDelay(extra)) {
    // Played by the media element: the jitter buffer's target is the only delay there.
    const { receiver } = playingSource();
    if (receiver && 'jitterBufferTarget' in receiver) {
      try {
        receiver.jitterBufferTarget = Math.round(extra);
        app.jitterTargetMs = Math.round(extra);
      } catch (_) {
        // Out of the browser's range: leave it.
      }
    }
  }
  updateLatency();
}

function startStats() {
  stopStats();
  app.statsTimer = setInterval(async () => {
    let st;
    try {
      st = await collectStats();
    } catch (_) {
      return;
    }
    const inb = st.inbound;
    if (inb && typeof inb.jitterBufferDelay === 'number' && inb.jitterBufferEmittedCount > 0) {
      const prev = app.prevInbound;
      app.jitterBufferMs = overLastPoll(prev, inb, 'jitterBufferDelay')
        ?? (inb.jitterBufferDelay / inb.jitterBufferEmittedCount) * 1000;
      app.prevInbound = inb;
      holdJitterFloor(overLastPoll(prev, inb, 'jitterBufferTargetDelay'));
    }
    audio.checkSilentPlayback(inb && inb.audioLevel);
    updateLatency();
  }, STATS_INTERVAL_MS);
}

/** A jitter-buffer stat summed over the samples it emitted (`jitterBufferDelay`,
 * `jitterBufferTargetDelay`: seconds), as ms per sample since the last poll; null
 * without a last poll, a sample since, or the stat. */
function overLastPoll(prev, inb, key) {
  const dCount = prev ? inb.jitterBufferEmittedCount - prev.jitterBufferEmittedCount : 0;
  if (dCount <= 0 || typeof inb[key] !== 'number' || typeof prev[key] !== 'number') return null;
  return ((inb[key] - prev[key]) / dCount) * 1000;
}

/** The floor under the jitter buffer while a song is on (sync.js `JitterFloor`), fed
 * its target over the last poll (ms, or null). Only where the page plays through Web
 * Audio: the media element's playback steers with `jitterBufferTarget` itself
 * (`onSync`). */
const jitterFloor = new JitterFloor();

function holdJitterFloor(target) {
  if (audio.playback !== 'webaudio' || target === null) return;
  const { receiver } = playingSource();
  if (!receiver || !('jitterBufferTarget' in receiver)) return;
  const floor = jitterFloor.observe(target, app.song ? app.song.generation : null);
  if (floor === app.jitterFloorMs) return;
  try {
    receiver.jitterBufferTarget = floor;
    app.jitterFloorMs = floor;
  } catch (_) {
    // Out of the browser's range: leave it.
  }
}

function stopStats() {
  clearInterval(app.statsTimer);
  app.statsTimer = 0;
}

function drawMeter(now) {
  app.meterFrame = requestAnimationFrame(drawMeter);
  view.meter(audio.micPowerPeak(), audio.muted, now);
}

function startMeter() {
  if (!app.meterFrame) app.meterFrame = requestAnimationFrame(drawMeter);
}

function stopMeter() {
  if (app.meterFrame) cancelAnimationFrame(app.meterFrame);
  app.meterFrame = 0;
  view.meter(null, false, 0);
}

function requestWakeLock() {
  if (!navigator.wakeLock || app.wakeLock || document.visibilityState !== 'visible') return;
  navigator.wakeLock.request('screen').then((lock) => {
    app.wakeLock = lock;
    lock.addEventListener('release', () => {
      if (app.wakeLock === lock) app.wakeLock = null;
    });
  }).catch(() => {});
}

function releaseWakeLock() {
  if (app.wakeLock) app.wakeLock.release().catch(() => {});
  app.wakeLock = null;
}

// ---------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------

function sendMixNow() {
  clearTimeout(app.mixTimer);
  app.mixTimer = 0;
  app.mixSentAt = Date.now();
  if (app.role !== 'singer') return;
  const msg = mixMessage({
    monitor: Number(ui.monitor.value) / 100,
    reverb: Number(ui.reverb.value) / 100,
  });
  if (msg) session.send(msg);
}

/** Sends slider changes at most every MIX_SEND_MS, always ending on the last value. */
function sendMixSoon() {
  const wait = app.mixSentAt + MIX_SEND_MS - Date.now();
  if (wait <= 0) sendMixNow();
  else if (!app.mixTimer) app.mixTimer = setTimeout(sendMixNow, wait);
}

function onVolume() {
  view.slider(ui.volume, ui.volumeOut);
  save(KEY_VOLUME, ui.volume.value);
  audio.setVolume(Number(ui.volume.value) / 100);
}

function onMixSlider(input, out, key) {
  view.slider(input, out);
  save(key, input.value);
  sendMixSoon();
}

/** Measures this phone's round trip (calibrate.js) and tells the box, which keeps it
 * with the rejoin token. Resolves to the result (for the tests). */
async function onCalibrate() {
  if (app.calibrating || app.state !== 'live' || app.role !== 'singer') return null;
  app.calibrating = true;
  view.calibration(app.roundTripMs, 'measuring');
  let result;
  try {
    result = await audio.calibrate();
  } catch (err) {
    result = { ok: false, why: (err && err.code) || 'calibration_failed' };
  }
  app.calibrating = false;
  app.calibration = result;
  if (result.ok) {
    app.roundTripMs = result.ms;
    session.send({ type: 'calibration', round_trip_ms: result.ms, output_ms: Math.min(result.outputMs, result.ms) });
  }
  view.calibration(app.roundTripMs, result.ok ? null : result.why);
  return result;
}

function onMute() {
  audio.setMuted(!audio.muted);
  view.mute(audio.muted);
  if (app.state === 'live') setState('live', null);
}

async function onJoin(ev) {
  ev.preventDefault();
  if (session.wanted) return; // A second tap while joining.
  const checked = checkName(ui.name.value);
  if (checked.error) {
    view.nameError(checked.error);
    ui.name.focus();
    return;
  }
  view.nameError('');
  // Before any await: the AudioContext must be created inside the tap.
  audio.unlock();
  app.role = view.selectedRole();
  app.pin = ui.pin.value.trim();
  app.everLive = false;
  app.error = null;
  save(KEY_NAME, checked.name);
  save(KEY_ROLE, app.role);
  document.body.classList.toggle('is-listener', app.role === 'listener');
  if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
  if (!window.RTCPeerConnection || !window.WebSocket) {
    setState('error', 'no_webrtc');
    return;
  }
  if (app.role === 'singer' && !window.isSecureContext) {
    setState('error', 'insecure');
    return;
  }
  ui.micCard.hidden = app.role !== 'singer';
  audio.setVolume(Number(ui.volume.value) / 100);
  setState('connecting', null, app.role === 'singer' ? 'Asking for the microphone\u2026' : undefined);
  audio.startSampling();
  if (app.role === 'singer') startMeter();
  session.start({ name: checked.name, role: app.role, pin: app.pin });
}

function onLeave() {
  session.leave();
  if (app.state !== 'idle') onStopped(null);
}

// ---------------------------------------------------------------------------------
// Test hook (used by tests/e2e; read-only, harmless in production)
// ---------------------------------------------------------------------------------

window.duetboxTest = {
  /** The recordings of the songs this phone sang in, as the box sent them. */
  recordings: () => app.recordings || [],
  /** 'idle' | 'connecting' | 'live' | 'reconnecting' | 'error' */
  state: () => app.state,
  /** Last error code (box code or the page's own, see explain()), or null. */
  error: () => app.error,
  /** dB of each frequency (Hz) in the received mix, averaged over the last ~1 s (or
   * the last `n` 100 ms readings); nulls before any audio arrived. */
  toneLevels: (freqs, n) => audio.toneLevels(freqs, n),
  /** RMS dBFS of the local mic over the last ~1 s; null for listeners. */
  micLevel: () => audio.micLevel(),
  /** Selected getStats() numbers. */
  stats: () => collectStats(),
  /** The offer as sent, to check the Opus parameters. */
  localSdp: () => session.localSdp(),
  /** Who this phone is to the box: { peer, slot }. */
  identity: () => ({ peer: app.peer, slot: app.slot }),
  /** The current peer connection (a test delays its media). */
  peerConnection: () => session.peerConnection(),
  /** The return mix's Web Audio output: { ctx, node } (a test listens to it). */
  output: () => ({ ctx: audio.ctx, node: audio.outputNode() }),
  /** Playout sync: the last offset from the speakers (ms), the extra delay, the lead,
   * the clock's best round trip, and the last minute of [epoch ms, offset, extra, lead,
   * correction, jitter buffer, its floor]. */
  sync: () => ({
    offset_ms: app.syncOffsetMs, extra_ms: audio.extraMs, lead_ms: app.leadMs, clock_rtt_ms: boxClock.bestRtt(), one_way_ms: app.oneWayMs ?? null,
    correction_ms: correction.value(), matches: correction.lags.slice(), match_r: app.matchR, match_why: app.matchWhy,
    history: app.syncHistory.map(([t, ...rest]) => [performance.timeOrigin + t, ...rest]),
  }),
  /** When each lyric line appeared: [{ line, at (performance.now()), ms }]. */
  lyricsAppeared: () => lyrics.appeared,
  /** The start (ms of the song) of every lyric line of the song loaded. */
  lyricLines: () => lyrics.lines.map((l) => l.start_ms),
  /** The song position (ms) of what this phone plays now, or null. */
  heardSongMs: () => heardSongMs(),
  /** The last `queue` message (entries, song), or null. */
  queue: () => songs.queue,
  /** The song search results shown. */
  songs: () => songs.results,
  /** Runs the round-trip calibration as the button does; resolves to its result. */
  calibrate: () => onCalibrate(),
  /** { roundTripMs (as the box keeps it), last (the last result) }. */
  calibration: () => ({ roundTripMs: app.roundTripMs, last: app.calibration }),
  /** The singer's own mix sliders, 0–100. */
  mix: () => ({ monitor: Number(ui.monitor.value), reverb: Number(ui.reverb.value) }),
};

// ---------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------

function init() {
  ui.name.value = load(KEY_NAME, '');
  const role = load(KEY_ROLE, 'singer') === 'listener' ? 'listener' : 'singer';
  view.selectRole(role);
  ui.volume.value = String(clampNumber(load(KEY_VOLUME, 100), 0, 100, 100));
  ui.monitor.value = String(clampNumber(load(KEY_MONITOR, 0), 0, 100, 0));
  ui.reverb.value = String(clampNumber(load(KEY_REVERB, 0), 0, 100, 0));
  view.slider(ui.volume, ui.volumeOut);
  view.slider(ui.monitor, ui.monitorOut);
  view.slider(ui.reverb, ui.reverbOut);
  view.roleHint(role);
  view.slot(null);

  ui.form.addEventListener('submit', onJoin);
  ui.form.addEventListener('change', (ev) => {
    if (ev.target && ev.target.name === 'role') view.roleHint(view.selectedRole());
  });
  ui.name.addEventListener('input', () => view.nameError(''));
  ui.volume.addEventListener('input', onVolume);
  ui.monitor.addEventListener('input', () => onMixSlider(ui.monitor, ui.monitorOut, KEY_MONITOR));
  ui.reverb.addEventListener('input', () => onMixSlider(ui.reverb, ui.reverbOut, KEY_REVERB));
  ui.mute.addEventListener('click', onMute);
  ui.calibrate.addEventListener('click', onCalibrate);
  ui.leave.addEventListener('click', onLeave);
  setInterval(tickCountdown, 500);

  // iOS suspends (or "interrupts") the context after a call or when backgrounded;
  // any later tap may resume it.
  document.addEventListener('pointerdown', () => {
    if (session.wanted) audio.resume();
  }, { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && app.state === 'live') {
      audio.resume();
      requestWakeLock();
    }
  });
  // A page that goes away (reload, tab closed, killed in the background) does not
  // leave: the box keeps its place for the rejoin grace, and Join in this tab within
  // it comes back to the same slot. Leave is the button.

  if (!window.isSecureContext) setState('error', 'insecure');
  else setState('idle', null);
}

init();
