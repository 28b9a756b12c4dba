// duetbox phone page: the join form, the microphone, one WebRTC link to the box, the
// return-mix playback, the singer's controls and the state banner.
//
// Owns the phone's side of docs/protocol.md (version 1) and knows nothing of the box
// beyond those messages. Served as a static file: no build step, no module loader, no
// request anywhere but the box (the venue may have no internet).
//
// Invariants: audio starts only inside the Join tap (iOS Safari and Chrome autoplay
// rules); at most one session (WebSocket + RTCPeerConnection) exists at a time and
// events of an ended session are ignored; the page never reconnects after Leave or a
// refusal (wrong PIN, full box, replaced, version). Targets Android Chrome and iOS
// Safari 15+: ES2020, no AudioWorklet, no Array.prototype.at, no structuredClone.
'use strict';

/** Heartbeat period in ms: the protocol asks for one `ping` every 5 s. */
const PING_INTERVAL_MS = 5000;
/** A WebSocket with no message for this long (ms) is treated as dead. The box answers
 * every ping, so this is three missed pongs; Wi-Fi drop-outs often leave TCP unaware. */
const SILENCE_LIMIT_MS = 15000;
/** From a connection attempt to a connected PeerConnection, at most this long (ms)
 * before starting over; it also bounds a WebSocket handshake with a frozen box. LAN
 * ICE takes well under a second; this stays under the integration driver's 20 s
 * deadline so one retry is not hidden behind it. */
const LIVE_DEADLINE_MS = 15000;
/** How long (ms) ICE may stay "disconnected" before the session is rebuilt. The box
 * frees the seat after about 5 s without ICE consent, so waiting longer gains nothing. */
const DISCONNECTED_GRACE_MS = 5000;
/** First reconnect delay in ms; it doubles per failure up to BACKOFF_MAX_MS. */
const BACKOFF_FIRST_MS = 1000;
/** Longest reconnect delay in ms: a box restarting after a power cut is back within
 * seconds, and a phone should not wait long after it is. */
const BACKOFF_MAX_MS = 10000;

/** FFT size of the return-mix analyser. At 48 kHz the bins are 2.9 Hz wide, so test
 * tones a few hundred Hz apart land in separate, narrow peaks. */
const TONE_FFT_SIZE = 16384;
/** Period (ms) between spectrum and mic-level readings for the test hook. */
const TONE_SAMPLE_MS = 100;
/** Readings kept: 10 × 100 ms is the "last second" the test hook averages over. */
const TONE_WINDOW = 10;
/** Bins either side of a frequency searched for its peak: the Blackman window spreads
 * a pure tone over about ±2 bins, and the phone's clock may be a few ppm off. */
const TONE_BIN_SPAN = 2;
/** dB reported for digital silence; -Infinity does not survive JSON. */
const DB_FLOOR = -160;
/** Bottom of the visible level bars in dBFS; quieter than this shows as empty. */
const METER_FLOOR_DB = -60;
/** Level (dBFS peak) above which the mic bar turns red: close to clipping. */
const METER_HOT_DB = -3;
/** Level (dBFS peak) above which the mic bar turns yellow: a healthy loud voice. */
const METER_MID_DB = -18;
/** Minimum gap (ms) between `mix` messages while a slider is dragged. */
const MIX_SEND_MS = 100;
/** Period (ms) of the getStats() poll that feeds the delay figures. */
const STATS_INTERVAL_MS = 1000;
/** Seconds of silence in WebAudio while getStats() says sound is arriving before
 * playback falls back to the media element (a guard against browsers that do not
 * route remote WebRTC audio into WebAudio; the volume slider then does nothing). */
const SILENT_FALLBACK_S = 3;
/** Opus parameters forced into the offer: in-band FEC (the box conceals losses with
 * it), no DTX (silence gaps would look like losses to the jitter buffer), a stereo
 * return mix, a mono mic and 10 ms packets allowed. */
const OPUS_FMTP = [
  ['useinbandfec', '1'],
  ['usedtx', '0'],
  ['stereo', '1'],
  ['sprop-stereo', '0'],
  ['minptime', '10'],
];
/** The raw voice: the box mixes for a stage, so phone-call processing (echo
 * cancellation, noise gate, automatic gain) would only pump and colour the singing. */
const MIC_CONSTRAINTS = {
  audio: {
    echoCancellation: false,
    noiseSuppression: false,
    autoGainControl: false,
    channelCount: 1,
  },
  video: false,
};
/** Longest name the box accepts, in characters after trimming (protocol: 1–32). */
const MAX_NAME_CHARS = 32;
/** HTTPS port of the box (protocol.md: `wss://<box>:8443/ws`), for the "open the https
 * address" hint when the page was opened over plain http. */
const BOX_HTTPS_PORT = 8443;
/** Room rows shown before the rest are summarised as "+N more". */
const ROOM_ROWS_MAX = 12;
/** localStorage keys. */
const KEY_NAME = 'duetbox.name';
const KEY_ROLE = 'duetbox.role';
const KEY_VOLUME = 'duetbox.volume';
const KEY_MONITOR = 'duetbox.monitor';
const KEY_REVERB = 'duetbox.reverb';

/** Big word on the banner per state. */
const STATE_WORDS = {
  idle: 'Ready',
  connecting: 'Connecting',
  live: 'Live',
  reconnecting: 'Reconnecting',
  error: 'Error',
};

/** Refusals by the box after which retrying cannot help (protocol.md, error codes). */
const FATAL_CODES = new Set(['version', 'wrong_pin', 'room_full', 'too_large', 'bad_sdp']);

// ---------------------------------------------------------------------------------
// Page state
// ---------------------------------------------------------------------------------

const ui = {};

const app = {
  state: 'idle',
  /** Last error code: a box code from protocol.md or one of ours (see explain()). */
  error: null,
  name: '',
  role: 'singer',
  pin: '',
  /** The user asked to be on stage: Join tapped and no Leave or refusal since. */
  wanted: false,
  /** Live at least once since Join: later attempts say "reconnecting". */
  everLive: false,
  backoffMs: BACKOFF_FIRST_MS,
  retryTimer: 0,
  retryAt: 0,
  session: null,
  sessionSeq: 0,
  myPeer: null,

  ctx: null,
  mic: null,
  micTrack: null,
  micGraph: null,
  micMuted: false,
  micReadings: [],
  remote: null,
  toneReadings: [],
  samplerTimer: 0,
  meterFrame: 0,

  rttMs: null,
  boxDelayMs: null,
  lossPct: null,
  jitterBufferMs: null,
  prevInbound: null,
  statsTimer: 0,
  playback: 'webaudio',
  silentSeconds: 0,
  wakeLock: null,
  mixTimer: 0,
  mixSentAt: 0,
  roomKey: '',
};

// ---------------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------------

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

function round1(x) {
  return Math.round(x * 10) / 10;
}

function dbToPercent(db) {
  if (typeof db !== 'number' || !Number.isFinite(db)) return 0;
  return Math.max(0, Math.min(100, (1 - db / METER_FLOOR_DB) * 100));
}

function httpsAddress() {
  return `https://${location.hostname}:${BOX_HTTPS_PORT}/`;
}

function wsUrl() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}/ws`;
}

// ---------------------------------------------------------------------------------
// Banner and views
// ---------------------------------------------------------------------------------

/** A human sentence for an error code. Box codes are from protocol.md; the others are
 * the page's own: insecure, mic_denied, no_mic, mic_busy, mic_failed, no_webrtc,
 * unreachable, connection_lost, link_weak, link_failed, mic_lost, client. */
function explain(code, detail) {
  switch (code) {
    case 'insecure':
      return 'This page must be opened over https to use the microphone. Open this address instead (accept the warning about the box\u2019s certificate):';
    case 'mic_denied':
      return 'Microphone blocked. Allow the microphone for this page (the icon next to the address, or your browser\u2019s site settings), then tap Join again \u2014 or join as a Listener.';
    case 'no_mic':
      return 'No microphone found on this phone. You can join as a Listener.';
    case 'mic_busy':
      return 'The microphone is busy in another app (a call or a recorder). Close it, then tap Join again.';
    case 'mic_failed':
      return `The microphone could not be opened${detail ? ` (${detail})` : ''}.`;
    case 'mic_lost':
      return 'The microphone stopped (a call, or another app took it).';
    case 'no_webrtc':
      return 'This browser cannot do live audio. Use an up-to-date Chrome (Android) or Safari (iPhone).';
    case 'room_full':
      return app.role === 'singer'
        ? 'All singer seats are taken. Join as a Listener, or try again when a singer leaves.'
        : 'The box has no room for more listeners right now. Try again later.';
    case 'wrong_pin':
      return app.pin
        ? 'Wrong PIN. Check the PIN with the host, then tap Join again.'
        : 'This box needs a PIN. Ask the host for it, type it below and tap Join again.';
    case 'version':
      return 'This page is out of date. Reload it.';
    case 'too_large':
      return 'The box refused a message from this page. Reload the page.';
    case 'bad_sdp':
      return 'The box cannot use this browser\u2019s audio. Try an up-to-date Chrome or Safari.';
    case 'replaced':
      return 'You were connected again from another tab or phone, so this one stopped.';
    case 'shutdown':
      return 'The box was switched off. Rejoining when it is back\u2026';
    case 'timeout':
      return 'The box stopped hearing from this phone.';
    case 'unreachable':
      return 'Can\u2019t reach the box. Check that you are on the venue\u2019s Wi-Fi.';
    case 'connection_lost':
      return 'Connection to the box lost.';
    case 'link_weak':
      return 'Audio signal lost. Hold on\u2026';
    case 'link_failed':
      return 'The audio link to the box failed.';
    case 'internal':
      return 'The box had a problem setting up your audio.';
    case 'client':
      return `Something went wrong on this phone${detail ? ` (${detail})` : ''}.`;
    default:
      return code ? `Error: ${code}${detail ? ` (${detail})` : ''}` : '';
  }
}

function defaultMessage(state) {
  switch (state) {
    case 'idle':
      return 'Type your name and tap Join.';
    case 'connecting':
      return 'Contacting the box\u2026';
    case 'live':
      if (app.role !== 'singer') return 'You\u2019re listening.';
      return app.micMuted ? 'You\u2019re on stage, but your mic is muted.' : 'You\u2019re on stage. Sing!';
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
  if (code) parts.push(explain(code, detail));
  if (note) parts.push(note);
  if (!parts.length) parts.push(defaultMessage(state));
  ui.banner.className = `banner is-${state}`;
  ui.stateWord.textContent = STATE_WORDS[state] || state;
  ui.stateMsg.textContent = parts.join(' ');
  if (code === 'insecure') {
    ui.stateLink.href = httpsAddress();
    ui.stateLink.textContent = httpsAddress();
    ui.stateLink.hidden = false;
  } else {
    ui.stateLink.hidden = true;
  }
  const onStage = state === 'connecting' || state === 'live' || state === 'reconnecting';
  ui.joinView.hidden = onStage;
  ui.stageView.hidden = !onStage;
  ui.leave.textContent = app.everLive ? 'Leave' : 'Cancel';
  document.title = state === 'idle' ? 'duetbox' : `${STATE_WORDS[state]} \u2013 duetbox`;
}

/** Redraws the "retrying in N s" countdown while a reconnect is pending. */
function tickCountdown() {
  if (app.state !== 'reconnecting' || !app.retryAt) return;
  const s = Math.max(1, Math.ceil((app.retryAt - Date.now()) / 1000));
  ui.stateMsg.textContent = `${explain(app.error)} Retrying in ${s} s\u2026`;
}

// ---------------------------------------------------------------------------------
// Audio: context, microphone, return mix
// ---------------------------------------------------------------------------------

/** Creates or resumes the AudioContext. Must run synchronously inside a user tap:
 * iOS Safari and Chrome keep a context created outside one suspended. */
function unlockAudio() {
  const Ctor = window.AudioContext || window.webkitAudioContext;
  if (!Ctor) return;
  if (!app.ctx) {
    try {
      app.ctx = new Ctor({ latencyHint: 'interactive' });
    } catch (_) {
      app.ctx = new Ctor(); // Old webkitAudioContext takes no options.
    }
  }
  if (app.ctx.state !== 'running') app.ctx.resume().catch(() => {});
  // iOS unlocks output only once a sound starts inside the gesture: one silent sample.
  try {
    const buf = app.ctx.createBuffer(1, 1, app.ctx.sampleRate);
    const src = app.ctx.createBufferSource();
    src.buffer = buf;
    src.connect(app.ctx.destination);
    src.start(0);
  } catch (_) {
    // Harmless: only an older-iOS nicety.
  }
}

function resumeAudioIfNeeded() {
  if (app.ctx && app.ctx.state !== 'running' && app.wanted) app.ctx.resume().catch(() => {});
}

function micErrorCode(err) {
  switch (err && err.name) {
    case 'NotAllowedError':
    case 'SecurityError':
    case 'PermissionDeniedError':
      return 'mic_denied';
    case 'NotFoundError':
    case 'DevicesNotFoundError':
    case 'OverconstrainedError':
      return 'no_mic';
    case 'NotReadableError':
    case 'TrackStartError':
    case 'AbortError':
      return 'mic_busy';
    default:
      return 'mic_failed';
  }
}

/** Opens the microphone (singers only). Returns false after showing the reason. */
async function openMic() {
  if (!window.isSecureContext) {
    fail('insecure');
    return false;
  }
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    fail('no_webrtc');
    return false;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  } catch (err) {
    console.warn('getUserMedia failed:', err && err.name, err && err.message);
    fail(micErrorCode(err), err && err.message);
    return false;
  }
  if (!app.wanted) {
    // Cancelled while the permission prompt was up.
    stream.getTracks().forEach((t) => t.stop());
    return false;
  }
  const track = stream.getAudioTracks()[0];
  if (!track) {
    stream.getTracks().forEach((t) => t.stop());
    fail('no_mic');
    return false;
  }
  app.mic = stream;
  app.micTrack = track;
  track.enabled = !app.micMuted;
  track.addEventListener('ended', () => {
    if (app.micTrack !== track) return;
    const s = app.session;
    if (s && !s.done) lost(s, 'mic_lost');
  });
  buildMicGraph();
  return true;
}

function buildMicGraph() {
  const ctx = app.ctx;
  if (!ctx || !app.mic) return;
  const source = ctx.createMediaStreamSource(app.mic);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 2048;
  analyser.smoothingTimeConstant = 0;
  // Some engines pull an analyser only when it leads to the destination; a zero gain
  // keeps the mic out of the speakers.
  const sink = ctx.createGain();
  sink.gain.value = 0;
  source.connect(analyser);
  analyser.connect(sink);
  sink.connect(ctx.destination);
  app.micGraph = { source, analyser, sink, buf: new Float32Array(analyser.fftSize) };
  app.micReadings = [];
}

/** Disconnects Web Audio nodes, each on its own (one already disconnected is fine). */
function disconnectNodes(...nodes) {
  for (const node of nodes) {
    try {
      node.disconnect();
    } catch (_) {
      // Already disconnected.
    }
  }
}

function closeMic() {
  if (app.micGraph) disconnectNodes(app.micGraph.source, app.micGraph.sink);
  app.micGraph = null;
  app.micReadings = [];
  if (app.mic) app.mic.getTracks().forEach((t) => t.stop());
  app.mic = null;
  app.micTrack = null;
}

/** Mean square and peak of the mic over the analyser's window (about 43 ms). */
function micPowerPeak() {
  const g = app.micGraph;
  if (!g) return null;
  g.analyser.getFloatTimeDomainData(g.buf);
  let sum = 0;
  let peak = 0;
  for (let i = 0; i < g.buf.length; i++) {
    const v = g.buf[i];
    sum += v * v;
    const a = v < 0 ? -v : v;
    if (a > peak) peak = a;
  }
  return { power: sum / g.buf.length, peak };
}

function attachRemote(stream) {
  ui.audio.srcObject = stream;
  ui.audio.muted = app.playback === 'webaudio';
  const played = ui.audio.play();
  if (played && played.catch) played.catch(() => {});
  detachRemoteGraph();
  const ctx = app.ctx;
  if (!ctx) return;
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = TONE_FFT_SIZE;
  analyser.smoothingTimeConstant = 0; // The test hook averages readings itself.
  const gain = ctx.createGain();
  gain.gain.value = app.playback === 'webaudio' ? volumeGain() : 0;
  source.connect(analyser);
  source.connect(gain);
  gain.connect(ctx.destination);
  app.remote = { stream, source, analyser, gain, buf: new Float32Array(analyser.frequencyBinCount) };
  app.toneReadings = [];
}

function detachRemoteGraph() {
  if (app.remote) disconnectNodes(app.remote.source, app.remote.gain);
  app.remote = null;
  app.toneReadings = [];
}

function detachRemote() {
  detachRemoteGraph();
  ui.audio.srcObject = null;
}

function volumeGain() {
  return Number(ui.volume.value) / 100;
}

/** Takes one spectrum of the return mix and one mic level; keeps the last second. */
function sample() {
  const r = app.remote;
  if (r) {
    r.analyser.getFloatFrequencyData(r.buf);
    app.toneReadings.push(Float32Array.from(r.buf));
    if (app.toneReadings.length > TONE_WINDOW) app.toneReadings.shift();
  }
  const m = micPowerPeak();
  if (m) {
    app.micReadings.push(m.power);
    if (app.micReadings.length > TONE_WINDOW) app.micReadings.shift();
  }
}

/** dB level of each frequency in the received audio, averaged over the last second. */
function toneLevels(freqs) {
  const list = Array.isArray(freqs) ? freqs : [freqs];
  const readings = app.toneReadings;
  if (!app.remote || !app.ctx || !readings.length) return list.map(() => null);
  const binHz = app.ctx.sampleRate / TONE_FFT_SIZE;
  return list.map((f) => {
    const centre = Math.round(Number(f) / binHz);
    let sum = 0;
    for (const r of readings) {
      let best = -Infinity;
      for (let k = centre - TONE_BIN_SPAN; k <= centre + TONE_BIN_SPAN; k++) {
        if (k >= 0 && k < r.length && r[k] > best) best = r[k];
      }
      sum += Math.max(best, DB_FLOOR);
    }
    return round1(sum / readings.length);
  });
}

/** RMS level of the microphone in dBFS over the last second, or null for listeners. */
function micLevel() {
  if (!app.micGraph || !app.micReadings.length) return null;
  const mean = app.micReadings.reduce((a, b) => a + b, 0) / app.micReadings.length;
  return mean > 0 ? round1(Math.max(DB_FLOOR, 10 * Math.log10(mean))) : DB_FLOOR;
}

function startSampling() {
  if (!app.samplerTimer) app.samplerTimer = setInterval(sample, TONE_SAMPLE_MS);
  if (!app.meterFrame) app.meterFrame = requestAnimationFrame(drawMeter);
}

function stopSampling() {
  clearInterval(app.samplerTimer);
  app.samplerTimer = 0;
  if (app.meterFrame) cancelAnimationFrame(app.meterFrame);
  app.meterFrame = 0;
  ui.micFill.style.width = '0%';
  ui.micDb.textContent = '\u2013';
}

let meterLastAria = 0;

function drawMeter(now) {
  app.meterFrame = requestAnimationFrame(drawMeter);
  const m = micPowerPeak();
  if (!m) return;
  const peakDb = m.peak > 0 ? 20 * Math.log10(m.peak) : -Infinity;
  const rmsDb = m.power > 0 ? 10 * Math.log10(m.power) : -Infinity;
  ui.micFill.style.width = `${dbToPercent(peakDb)}%`;
  ui.micFill.className = `meter-fill${peakDb > METER_HOT_DB ? ' is-high' : peakDb > METER_MID_DB ? ' is-mid' : ''}`;
  if (now - meterLastAria > 500) {
    meterLastAria = now;
    const shown = Number.isFinite(rmsDb) ? Math.max(METER_FLOOR_DB, Math.round(rmsDb)) : METER_FLOOR_DB;
    ui.micMeter.setAttribute('aria-valuenow', String(shown));
    if (app.micMuted) ui.micDb.textContent = 'muted';
    else ui.micDb.textContent = Number.isFinite(rmsDb) && rmsDb > METER_FLOOR_DB ? `${Math.round(rmsDb)} dB` : 'silent';
  }
}

// ---------------------------------------------------------------------------------
// Session: one WebSocket + one RTCPeerConnection
// ---------------------------------------------------------------------------------

function send(s, msg) {
  if (s.ws && s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify(msg));
}

function isStale(s) {
  return s.done || app.session !== s;
}

async function connect() {
  app.retryTimer = 0;
  app.retryAt = 0;
  if (!app.wanted) return;
  if (app.role === 'singer' && (!app.micTrack || app.micTrack.readyState === 'ended')) {
    closeMic();
    if (!(await openMic())) return;
  }
  if (!app.wanted) return;
  const s = {
    seq: ++app.sessionSeq,
    ws: null,
    pc: null,
    opened: false,
    done: false,
    offerSent: false,
    answered: false,
    live: false,
    localCands: [],
    remoteCands: [],
    queue: Promise.resolve(),
    timers: [],
    lastRx: 0,
    liveTimer: 0,
    discTimer: 0,
  };
  app.session = s;
  if (app.state === 'reconnecting') {
    setState('reconnecting', app.error, 'Trying again now\u2026');
  } else {
    setState('connecting', null, 'Contacting the box\u2026');
  }
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (err) {
    console.warn('WebSocket failed:', err);
    lost(s, 'unreachable');
    return;
  }
  s.ws = ws;
  s.liveTimer = setTimeout(() => lost(s, s.opened ? 'link_failed' : 'unreachable'), LIVE_DEADLINE_MS);
  ws.onopen = () => {
    if (isStale(s)) return;
    s.opened = true;
    s.lastRx = Date.now();
    const join = { type: 'join', v: 1, name: app.name, role: app.role };
    if (app.pin) join.pin = app.pin;
    send(s, join);
    s.timers.push(setInterval(() => {
      if (Date.now() - s.lastRx > SILENCE_LIMIT_MS) lost(s, 'connection_lost');
    }, 1000));
  };
  ws.onmessage = (ev) => {
    if (isStale(s)) return;
    s.lastRx = Date.now();
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch (_) {
      console.warn('box sent a frame that is not JSON');
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    // One message at a time: an answer must not overtake the offer it answers.
    s.queue = s.queue
      .then(() => (isStale(s) ? undefined : handle(s, msg)))
      .catch((err) => {
        console.error(`handling "${msg.type}" failed:`, err);
        lost(s, 'client');
      });
  };
  ws.onerror = () => {
    // The close event follows and carries the decision.
  };
  ws.onclose = (ev) => {
    if (isStale(s)) return;
    if (ev.code === 1009) {
      fail('too_large');
      return;
    }
    lost(s, s.opened ? 'connection_lost' : 'unreachable');
  };
}

async function handle(s, msg) {
  switch (msg.type) {
    case 'welcome':
      app.myPeer = typeof msg.peer === 'string' ? msg.peer : null;
      send(s, { type: 'ping', t: performance.now() });
      s.timers.push(setInterval(() => send(s, { type: 'ping', t: performance.now() }), PING_INTERVAL_MS));
      if (app.role === 'singer') sendMixNow();
      setState(app.state, app.state === 'reconnecting' ? app.error : null, 'Setting up audio\u2026');
      await negotiate(s);
      break;
    case 'answer':
      if (!s.pc || typeof msg.sdp !== 'string') break;
      await s.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
      s.answered = true;
      for (const c of s.remoteCands.splice(0)) await addRemoteCandidate(s, c);
      break;
    case 'candidate':
      if (!s.pc || !s.answered) s.remoteCands.push(msg.candidate);
      else await addRemoteCandidate(s, msg.candidate);
      break;
    case 'room':
      renderRoom(msg.peers);
      break;
    case 'pong':
      if (typeof msg.t === 'number') {
        app.rttMs = Math.max(0, performance.now() - msg.t);
        updateLatency();
      }
      break;
    case 'error':
      onBoxError(s, msg);
      break;
    case 'bye':
      onBye(s, msg);
      break;
    default:
      break; // Newer boxes may send more; ignore what we do not know.
  }
}

async function addRemoteCandidate(s, c) {
  try {
    // null marks the end of the box's candidates.
    await s.pc.addIceCandidate(c || null);
  } catch (err) {
    // One bad candidate must not end the session; ICE uses the others.
    if (c) console.warn('box candidate refused:', err && err.message);
  }
}

function onBoxError(s, msg) {
  const code = typeof msg.code === 'string' ? msg.code : 'internal';
  if (FATAL_CODES.has(code)) {
    fail(code, msg.message);
  } else if (code === 'internal' && !s.answered) {
    lost(s, 'internal');
  } else {
    console.warn(`box error ${code}: ${msg.message || ''}`);
  }
}

function onBye(s, msg) {
  switch (msg.reason) {
    case 'left':
      break; // Our own leave; leave() already cleaned up.
    case 'replaced':
      fail('replaced');
      break;
    case 'shutdown':
      lost(s, 'shutdown');
      break;
    case 'timeout':
      lost(s, 'timeout');
      break;
    default:
      lost(s, 'connection_lost');
  }
}

/** Adds the `OPUS_FMTP` parameters to every Opus fmtp line of an SDP, keeping the
 * other parameters and their order, replacing rather than duplicating. */
function mungeOpus(sdp) {
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

function mergeFmtp(params) {
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

function candidateJson(c) {
  if (typeof c.toJSON === 'function') return c.toJSON();
  return { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
}

async function negotiate(s) {
  if (s.pc) return;
  const pc = new RTCPeerConnection({ iceServers: [] });
  s.pc = pc;
  pc.onicecandidate = (ev) => {
    if (isStale(s)) return;
    // Some browsers send an empty candidate before the final null; it carries nothing.
    if (ev.candidate && !ev.candidate.candidate) return;
    const c = ev.candidate ? candidateJson(ev.candidate) : null;
    if (s.offerSent) send(s, { type: 'candidate', candidate: c });
    else s.localCands.push(c);
  };
  pc.ontrack = (ev) => {
    if (isStale(s)) return;
    attachRemote(ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]));
  };
  pc.onconnectionstatechange = () => onLinkState(s);
  pc.oniceconnectionstatechange = () => onLinkState(s);

  if (app.role === 'singer') {
    pc.addTransceiver(app.micTrack, { direction: 'sendrecv', streams: [app.mic] });
  } else {
    pc.addTransceiver('audio', { direction: 'recvonly' });
  }
  const offer = await pc.createOffer();
  if (isStale(s)) return;
  let sdp = mungeOpus(offer.sdp);
  try {
    await pc.setLocalDescription({ type: 'offer', sdp });
  } catch (err) {
    // A browser that forbids this edit still gets a working, if plainer, call.
    console.warn('munged offer refused, sending the original:', err && err.message);
    sdp = offer.sdp;
    await pc.setLocalDescription(offer);
  }
  if (isStale(s)) return;
  // The text we set, not pc.localDescription: that one may already list candidates,
  // which then would reach the box twice.
  send(s, { type: 'offer', sdp });
  s.offerSent = true;
  for (const c of s.localCands.splice(0)) send(s, { type: 'candidate', candidate: c });
}

function linkState(pc) {
  const conn = pc.connectionState;
  const ice = pc.iceConnectionState;
  if (conn === 'failed' || ice === 'failed') return 'failed';
  if (conn === 'connected' || (!conn && (ice === 'connected' || ice === 'completed'))) return 'connected';
  if (conn === 'disconnected' || ice === 'disconnected') return 'disconnected';
  return 'connecting';
}

function onLinkState(s) {
  if (isStale(s) || !s.pc) return;
  switch (linkState(s.pc)) {
    case 'connected':
      clearTimeout(s.discTimer);
      s.discTimer = 0;
      if (!s.live) goLive(s);
      else if (app.state !== 'live') setState('live', null);
      break;
    case 'failed':
      lost(s, 'link_failed');
      break;
    case 'disconnected':
      if (s.live && !s.discTimer) {
        setState('reconnecting', 'link_weak');
        s.discTimer = setTimeout(() => lost(s, 'link_failed'), DISCONNECTED_GRACE_MS);
      }
      break;
    default:
      break;
  }
}

function goLive(s) {
  s.live = true;
  clearTimeout(s.liveTimer);
  app.everLive = true;
  app.backoffMs = BACKOFF_FIRST_MS;
  setState('live', null);
  resumeAudioIfNeeded();
  requestWakeLock();
  startStats(s);
}

/** Ends a session: no handler of it runs afterwards. */
function endSession(s) {
  if (s.done) return;
  s.done = true;
  s.timers.forEach((t) => clearInterval(t));
  clearTimeout(s.liveTimer);
  clearTimeout(s.discTimer);
  if (s.ws) {
    s.ws.onopen = null;
    s.ws.onmessage = null;
    s.ws.onclose = null;
    s.ws.onerror = null;
    try {
      s.ws.close(1000);
    } catch (_) {
      // Already closing.
    }
  }
  if (s.pc) {
    s.pc.onicecandidate = null;
    s.pc.ontrack = null;
    s.pc.onconnectionstatechange = null;
    s.pc.oniceconnectionstatechange = null;
    try {
      s.pc.close();
    } catch (_) {
      // Already closed.
    }
  }
  if (app.session === s) app.session = null;
  detachRemote();
  stopStats();
  app.rttMs = null;
  app.boxDelayMs = null;
  app.lossPct = null;
  app.jitterBufferMs = null;
  app.prevInbound = null;
  renderRoom([]);
  updateLatency();
}

/** The session broke: show why and, unless the user left, try again after a backoff. */
function lost(s, code) {
  if (isStale(s)) return;
  console.warn(`session ended: ${code}`);
  endSession(s);
  // After a shutdown the box is unreachable until it is back; keep saying why.
  app.error = code === 'unreachable' && app.error === 'shutdown' ? 'shutdown' : code;
  if (!app.wanted) return;
  const delay = app.backoffMs;
  app.backoffMs = Math.min(BACKOFF_MAX_MS, app.backoffMs * 2);
  app.retryAt = Date.now() + delay;
  clearTimeout(app.retryTimer);
  app.retryTimer = setTimeout(connect, delay);
  setState('reconnecting', app.error);
  tickCountdown();
}

/** A refusal or a local problem that retrying cannot fix: back to the form. */
function fail(code, detail) {
  console.warn(`stopped: ${code}${detail ? ` (${detail})` : ''}`);
  app.wanted = false;
  clearTimeout(app.retryTimer);
  app.retryTimer = 0;
  app.retryAt = 0;
  if (app.session) endSession(app.session);
  closeMic();
  stopSampling();
  releaseWakeLock();
  setState('error', code, undefined, detail);
  if (code === 'wrong_pin') ui.pin.focus();
}

function leave() {
  app.wanted = false;
  clearTimeout(app.retryTimer);
  app.retryTimer = 0;
  app.retryAt = 0;
  const s = app.session;
  if (s) {
    send(s, { type: 'leave' });
    endSession(s);
  }
  closeMic();
  stopSampling();
  releaseWakeLock();
  app.error = null;
  setState('idle', null, 'You left the stage. Tap Join to come back.');
}

// ---------------------------------------------------------------------------------
// Stats, latency figures, wake lock
// ---------------------------------------------------------------------------------

async function collectStats() {
  const out = {
    state: app.state,
    rtt_ms: app.rttMs === null ? null : round1(app.rttMs),
    box_delay_ms: app.boxDelayMs,
    loss_pct: app.lossPct,
    jitter_buffer_ms: app.jitterBufferMs === null ? null : round1(app.jitterBufferMs),
    playback: app.playback,
    audio_context: app.ctx ? app.ctx.state : null,
    sample_rate: app.ctx ? app.ctx.sampleRate : null,
    inbound: null,
    outbound: null,
    pair: null,
    codec: null,
  };
  const s = app.session;
  if (!s || !s.pc) return out;
  const report = await s.pc.getStats();
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
      codecs.set(r.id, { mimeType: r.mimeType, sdpFmtpLine: r.sdpFmtpLine, channels: r.channels });
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

function startStats(s) {
  stopStats();
  app.silentSeconds = 0;
  app.statsTimer = setInterval(async () => {
    if (isStale(s)) return;
    let st;
    try {
      st = await collectStats();
    } catch (_) {
      return;
    }
    const inb = st.inbound;
    if (inb && typeof inb.jitterBufferDelay === 'number' && inb.jitterBufferEmittedCount > 0) {
      const prev = app.prevInbound;
      const dCount = prev ? inb.jitterBufferEmittedCount - prev.jitterBufferEmittedCount : 0;
      app.jitterBufferMs = dCount > 0
        ? ((inb.jitterBufferDelay - prev.jitterBufferDelay) / dCount) * 1000
        : (inb.jitterBufferDelay / inb.jitterBufferEmittedCount) * 1000;
      app.prevInbound = inb;
    }
    checkSilentPlayback(inb);
    updateLatency();
  }, STATS_INTERVAL_MS);
}

function stopStats() {
  clearInterval(app.statsTimer);
  app.statsTimer = 0;
}

/** Falls back to media-element playback when WebAudio stays silent while sound is
 * arriving (see SILENT_FALLBACK_S). */
function checkSilentPlayback(inb) {
  if (app.playback !== 'webaudio' || !app.remote || !inb || !(inb.audioLevel > 0.01)) {
    app.silentSeconds = 0;
    return;
  }
  const last = app.toneReadings[app.toneReadings.length - 1];
  let loudest = -Infinity;
  if (last) for (let i = 0; i < last.length; i++) if (last[i] > loudest) loudest = last[i];
  if (loudest > DB_FLOOR + 10) {
    app.silentSeconds = 0;
    return;
  }
  app.silentSeconds += 1;
  if (app.silentSeconds >= SILENT_FALLBACK_S) {
    console.warn('WebAudio hears nothing of the return mix; playing it through the audio element');
    app.playback = 'element';
    app.remote.gain.gain.value = 0;
    ui.audio.muted = false;
    ui.audio.volume = volumeGain();
  }
}

function fmtMs(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${Math.round(v)} ms` : '\u2013';
}

function updateLatency() {
  ui.latRtt.textContent = fmtMs(app.rttMs);
  ui.latBox.textContent = fmtMs(app.boxDelayMs);
  ui.latPhone.textContent = fmtMs(app.jitterBufferMs);
  ui.latLoss.textContent = typeof app.lossPct === 'number' ? `${round1(app.lossPct)} %` : '\u2013';
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
// Room list
// ---------------------------------------------------------------------------------

function renderRoom(peers) {
  const list = (Array.isArray(peers) ? peers : []).filter((p) => p && typeof p.peer === 'string');
  const me = list.find((p) => p.peer === app.myPeer);
  app.boxDelayMs = me && typeof me.delay_ms === 'number' && app.role === 'singer' ? me.delay_ms : null;
  app.lossPct = me && typeof me.loss_pct === 'number' && app.role === 'singer' ? me.loss_pct : null;
  list.sort((a, b) => (a.role === b.role ? 0 : a.role === 'singer' ? -1 : 1));
  const shown = list.slice(0, ROOM_ROWS_MAX);
  const key = shown.map((p) => `${p.peer}\u0000${p.name}\u0000${p.role}`).join('\u0001') + `|${list.length}`;
  if (key !== app.roomKey) {
    app.roomKey = key;
    ui.roomList.textContent = '';
    for (const p of shown) {
      const li = document.createElement('li');
      const name = document.createElement('span');
      name.className = 'peer-name';
      name.textContent = String(p.name || '?');
      if (p.peer === app.myPeer) {
        const meTag = document.createElement('span');
        meTag.className = 'peer-me';
        meTag.textContent = ' (you)';
        name.appendChild(meTag);
      }
      const detail = document.createElement('span');
      detail.className = 'peer-detail';
      li.appendChild(name);
      li.appendChild(detail);
      if (p.role === 'singer') {
        const bar = document.createElement('div');
        bar.className = 'peer-bar';
        bar.setAttribute('aria-hidden', 'true');
        bar.appendChild(document.createElement('div'));
        li.appendChild(bar);
      }
      ui.roomList.appendChild(li);
    }
    if (list.length > shown.length) {
      const li = document.createElement('li');
      li.className = 'hint';
      li.textContent = `+${list.length - shown.length} more`;
      ui.roomList.appendChild(li);
    }
  }
  shown.forEach((p, i) => {
    const li = ui.roomList.children[i];
    if (!li) return;
    const detail = li.querySelector('.peer-detail');
    let text;
    if (p.state && p.state !== 'live') text = p.state;
    else if (p.role !== 'singer') text = 'listening';
    else {
      text = `${fmtMs(p.delay_ms)}`;
      if (typeof p.loss_pct === 'number' && p.loss_pct >= 1) text += ` \u00b7 ${Math.round(p.loss_pct)} % lost`;
    }
    detail.textContent = text;
    detail.classList.toggle('is-warn', (p.state && p.state !== 'live') || p.loss_pct >= 5);
    const fill = li.querySelector('.peer-bar > div');
    if (fill) fill.style.width = `${dbToPercent(p.level_db)}%`;
  });
  ui.roomCount.textContent = list.length ? `(${list.length})` : '';
  ui.roomEmpty.hidden = list.length > 0;
  updateLatency();
}

// ---------------------------------------------------------------------------------
// Controls
// ---------------------------------------------------------------------------------

function sendMixNow() {
  clearTimeout(app.mixTimer);
  app.mixTimer = 0;
  app.mixSentAt = Date.now();
  const s = app.session;
  if (!s || app.role !== 'singer') return;
  send(s, {
    type: 'mix',
    monitor: Number(ui.monitor.value) / 100,
    reverb: Number(ui.reverb.value) / 100,
  });
}

/** Sends slider changes at most every MIX_SEND_MS, always ending on the last value. */
function sendMixSoon() {
  const wait = app.mixSentAt + MIX_SEND_MS - Date.now();
  if (wait <= 0) sendMixNow();
  else if (!app.mixTimer) app.mixTimer = setTimeout(sendMixNow, wait);
}

function showSlider(input, out) {
  out.textContent = `${input.value} %`;
  input.setAttribute('aria-valuetext', `${input.value} percent`);
}

function onVolume() {
  showSlider(ui.volume, ui.volumeOut);
  save(KEY_VOLUME, ui.volume.value);
  if (app.remote && app.playback === 'webaudio') {
    const g = app.remote.gain.gain;
    // A short ramp avoids zipper noise while dragging.
    g.setTargetAtTime(volumeGain(), app.ctx.currentTime, 0.02);
  } else if (app.playback === 'element') {
    ui.audio.volume = volumeGain();
  }
}

function onMixSlider(input, out, key) {
  showSlider(input, out);
  save(key, input.value);
  sendMixSoon();
}

function onMute() {
  app.micMuted = !app.micMuted;
  if (app.micTrack) app.micTrack.enabled = !app.micMuted;
  ui.mute.setAttribute('aria-pressed', String(app.micMuted));
  ui.mute.textContent = app.micMuted ? 'Mic muted \u2013 tap to unmute' : 'Mute mic';
  ui.micMeter.classList.toggle('is-muted', app.micMuted);
  if (app.state === 'live') setState('live', null);
}

function selectedRole() {
  const checked = ui.form.querySelector('input[name="role"]:checked');
  return checked && checked.value === 'listener' ? 'listener' : 'singer';
}

function onRoleChange() {
  const role = selectedRole();
  ui.roleHint.textContent = role === 'singer'
    ? 'Your phone is your microphone. Use headphones.'
    : 'Hear the stage on your phone. No microphone needed.';
}

function showNameError(text) {
  ui.nameError.textContent = text;
  ui.nameError.hidden = !text;
  ui.name.setAttribute('aria-invalid', text ? 'true' : 'false');
}

async function onJoin(ev) {
  ev.preventDefault();
  if (app.wanted) return; // A second tap while joining.
  const name = ui.name.value.trim();
  if (!name) {
    showNameError('Type your name first.');
    ui.name.focus();
    return;
  }
  if (Array.from(name).length > MAX_NAME_CHARS) {
    showNameError(`At most ${MAX_NAME_CHARS} characters.`);
    ui.name.focus();
    return;
  }
  showNameError('');
  // Before any await: the AudioContext must be created inside the tap.
  unlockAudio();
  app.name = name;
  app.role = selectedRole();
  app.pin = ui.pin.value.trim();
  save(KEY_NAME, name);
  save(KEY_ROLE, app.role);
  document.body.classList.toggle('is-listener', app.role === 'listener');
  if (document.activeElement && document.activeElement.blur) document.activeElement.blur();
  if (!window.RTCPeerConnection || !window.WebSocket) {
    fail('no_webrtc');
    return;
  }
  if (app.role === 'singer' && !window.isSecureContext) {
    fail('insecure');
    return;
  }
  app.wanted = true;
  app.everLive = false;
  app.error = null;
  app.backoffMs = BACKOFF_FIRST_MS;
  app.myPeer = null;
  app.roomKey = '';
  app.playback = 'webaudio';
  ui.micCard.hidden = app.role !== 'singer';
  setState('connecting', null, app.role === 'singer' ? 'Asking for the microphone\u2026' : undefined);
  if (app.role === 'singer') {
    if (!(await openMic())) return;
  }
  startSampling();
  connect();
}

// ---------------------------------------------------------------------------------
// Test hook (used by tests/e2e/phones.mjs; read-only, harmless in production)
// ---------------------------------------------------------------------------------

window.duetboxTest = {
  /** 'idle' | 'connecting' | 'live' | 'reconnecting' | 'error' */
  state: () => app.state,
  /** Last error code (box code or the page's own, see explain()), or null. */
  error: () => app.error,
  /** dB of each frequency (Hz) in the received mix, averaged over the last ~1 s;
   * nulls before any audio arrived. */
  toneLevels: (freqs) => toneLevels(freqs),
  /** RMS dBFS of the local mic over the last ~1 s; null for listeners. */
  micLevel: () => micLevel(),
  /** Round trip, box and phone buffers, and selected getStats() numbers. */
  stats: () => collectStats(),
  /** The offer as sent, to check the Opus parameters. */
  localSdp: () => {
    const s = app.session;
    return s && s.pc && s.pc.localDescription ? s.pc.localDescription.sdp : null;
  },
};

// ---------------------------------------------------------------------------------
// Start-up
// ---------------------------------------------------------------------------------

function init() {
  const byId = (id) => document.getElementById(id);
  Object.assign(ui, {
    banner: byId('banner'),
    stateWord: byId('state-word'),
    stateMsg: byId('state-msg'),
    stateLink: byId('state-link'),
    joinView: byId('join-view'),
    stageView: byId('stage-view'),
    form: byId('join-form'),
    name: byId('name'),
    nameError: byId('name-error'),
    pin: byId('pin'),
    roleHint: byId('role-hint'),
    micCard: byId('mic-card'),
    micMeter: byId('mic-meter'),
    micFill: byId('mic-meter-fill'),
    micDb: byId('mic-db'),
    mute: byId('mute'),
    volume: byId('volume'),
    volumeOut: byId('volume-out'),
    monitor: byId('monitor'),
    monitorOut: byId('monitor-out'),
    reverb: byId('reverb'),
    reverbOut: byId('reverb-out'),
    roomList: byId('room-list'),
    roomCount: byId('room-count'),
    roomEmpty: byId('room-empty'),
    latRtt: byId('lat-rtt'),
    latBox: byId('lat-box'),
    latPhone: byId('lat-phone'),
    latLoss: byId('lat-loss'),
    leave: byId('leave'),
    audio: byId('remote-audio'),
  });

  ui.name.value = load(KEY_NAME, '');
  const role = load(KEY_ROLE, 'singer') === 'listener' ? 'listener' : 'singer';
  ui.form.querySelector(`input[name="role"][value="${role}"]`).checked = true;
  ui.volume.value = String(clampNumber(load(KEY_VOLUME, 100), 0, 100, 100));
  ui.monitor.value = String(clampNumber(load(KEY_MONITOR, 0), 0, 100, 0));
  ui.reverb.value = String(clampNumber(load(KEY_REVERB, 0), 0, 100, 0));
  showSlider(ui.volume, ui.volumeOut);
  showSlider(ui.monitor, ui.monitorOut);
  showSlider(ui.reverb, ui.reverbOut);
  onRoleChange();

  ui.form.addEventListener('submit', onJoin);
  ui.form.addEventListener('change', (ev) => {
    if (ev.target && ev.target.name === 'role') onRoleChange();
  });
  ui.name.addEventListener('input', () => showNameError(''));
  ui.volume.addEventListener('input', onVolume);
  ui.monitor.addEventListener('input', () => onMixSlider(ui.monitor, ui.monitorOut, KEY_MONITOR));
  ui.reverb.addEventListener('input', () => onMixSlider(ui.reverb, ui.reverbOut, KEY_REVERB));
  ui.mute.addEventListener('click', onMute);
  ui.leave.addEventListener('click', leave);
  setInterval(tickCountdown, 500);

  // iOS suspends (or "interrupts") the context after a call or when backgrounded;
  // any later tap may resume it.
  document.addEventListener('pointerdown', resumeAudioIfNeeded, { passive: true });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && app.state === 'live') {
      resumeAudioIfNeeded();
      requestWakeLock();
    }
  });
  // Free the seat at once when the page goes away, instead of after ICE times out.
  window.addEventListener('pagehide', () => {
    if (app.wanted) leave();
  });

  if (!window.isSecureContext) setState('error', 'insecure');
  else setState('idle', null);
}

init();
