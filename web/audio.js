// The phone's audio: the AudioContext (unlocked inside the Join tap), the microphone
// (raw: no echo cancellation, noise suppression or automatic gain), the return mix's
// playback with its volume, and the measurements the page and the tests read (mic
// level, the level of given tones in the return mix).
//
// Knows Web Audio and getUserMedia; knows nothing of the box or the DOM beyond the one
// <audio> element it plays through. Targets Android Chrome, iOS Safari 15+ and
// Firefox: webkitAudioContext as a fallback; without AudioWorklet the page still sings,
// only the level matching (sync-tap.js) and the calibration (calibrate-tap.js) are off.

import { CHIRPS, CHIRP_EVERY_S, MAX_ROUND_TRIP_MS, makeChirp, outputLatencyOf, roundTrip } from './calibrate.js';

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

/** FFT size of the return-mix analyser. At 48 kHz the bins are 2.9 Hz wide, so test
 * tones a few hundred Hz apart land in separate, narrow peaks. */
const TONE_FFT_SIZE = 16384;
/** Period (ms) between spectrum and mic-level readings. */
const SAMPLE_MS = 100;
/** Readings kept: 10 × 100 ms is the "last second" levels are averaged over. */
const WINDOW = 10;
/** Bins either side of a frequency searched for its peak: the Blackman window spreads
 * a pure tone over about ±2 bins, and the phone's clock may be a few ppm off. */
const TONE_BIN_SPAN = 2;
/** dB reported for digital silence; -Infinity does not survive JSON. */
export const DB_FLOOR = -160;
/** Seconds of silence in Web Audio while getStats() says sound is arriving before
 * playback falls back to the media element (a guard against browsers that do not
 * route remote WebRTC audio into Web Audio; the volume slider then sets the element's
 * volume instead). */
const SILENT_FALLBACK_S = 3;
/** The longest sync delay the graph can hold, s (sync.js's MAX_EXTRA_MS). */
const MAX_EXTRA_S = 2;
/** Context time (s) from calibrating to the first chirp: the recorder is running by
 * then. */
const CHIRP_LEAD_S = 0.3;

function round1(x) {
  return Math.round(x * 10) / 10;
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

/** The page's code for a getUserMedia failure. */
export function micErrorCode(err) {
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

export class PhoneAudio {
  /** `element`: the <audio> that keeps the remote stream flowing (Chrome feeds remote
   * WebRTC audio into Web Audio only while a media element plays it). */
  constructor(element) {
    this.element = element;
    this.ctx = null;
    this.mic = null;
    this.micGraph = null;
    this.micReadings = [];
    this.muted = false;
    this.remote = null;
    this.toneReadings = [];
    this.sampler = 0;
    this.volume = 1;
    this.playback = 'webaudio';
    this.silentSeconds = 0;
    this.onMicEnded = null;
    /** The delay (ms) this phone adds to the return mix to play it with the speakers
     * (sync.js); kept across streams. */
    this.extraMs = 0;
    /** Called with ({ times: [context s], db: [dB] }) as the return mix plays: its
     * level every 2.5 ms (sync-tap.js). */
    this.onLevels = null;
    this.tapModule = null;
    this.calibrateModule = null;
  }

  /** Creates or resumes the AudioContext. Must run synchronously inside a user tap:
   * iOS Safari and Chrome keep a context created outside one suspended. */
  unlock() {
    const Ctor = window.AudioContext || window.webkitAudioContext;
    if (!Ctor) return;
    if (!this.ctx) {
      try {
        this.ctx = new Ctor({ latencyHint: 'interactive' });
      } catch (_) {
        this.ctx = new Ctor(); // Old webkitAudioContext takes no options.
      }
    }
    if (this.ctx.state !== 'running') this.ctx.resume().catch(() => {});
    // iOS unlocks output only once a sound starts inside the gesture: one silent sample.
    try {
      const buf = this.ctx.createBuffer(1, 1, this.ctx.sampleRate);
      const src = this.ctx.createBufferSource();
      src.buffer = buf;
      src.connect(this.ctx.destination);
      src.start(0);
    } catch (_) {
      // Harmless: only an older-iOS nicety.
    }
    this.playback = 'webaudio';
  }

  /** iOS suspends (or "interrupts") the context after a call or when backgrounded. */
  /** How long (ms) after WebRTC hands audio to the page it is heard: the context's
   * processing and output latency (0 where the browser does not say). */
  outputDelayMs() {
    const c = this.ctx;
    if (!c) return 0;
    const base = typeof c.baseLatency === 'number' ? c.baseLatency : 0;
    const out = typeof c.outputLatency === 'number' ? c.outputLatency : 0;
    return (base + out) * 1000;
  }

  resume() {
    if (this.ctx && this.ctx.state !== 'running') this.ctx.resume().catch(() => {});
  }

  /** The open microphone { stream, track }, or null. */
  liveMic() {
    return this.mic && this.mic.track.readyState !== 'ended' ? this.mic : null;
  }

  /** Opens the microphone; throws { code, detail } with the page's error code. */
  async openMic() {
    if (this.liveMic()) return this.mic;
    this.closeMic();
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw { code: 'no_webrtc' };
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    } catch (err) {
      console.warn('getUserMedia failed:', err && err.name, err && err.message);
      throw { code: micErrorCode(err), detail: err && err.message };
    }
    const track = stream.getAudioTracks()[0];
    if (!track) {
      stream.getTracks().forEach((t) => t.stop());
      throw { code: 'no_mic' };
    }
    track.enabled = !this.muted;
    track.addEventListener('ended', () => {
      if (this.mic && this.mic.track === track && this.onMicEnded) this.onMicEnded();
    });
    this.mic = { stream, track };
    this.buildMicGraph();
    return this.mic;
  }

  buildMicGraph() {
    const ctx = this.ctx;
    if (!ctx || !this.mic) return;
    const source = ctx.createMediaStreamSource(this.mic.stream);
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
    this.micGraph = { source, analyser, sink, buf: new Float32Array(analyser.fftSize) };
    this.micReadings = [];
  }

  closeMic() {
    if (this.micGraph) disconnectNodes(this.micGraph.source, this.micGraph.sink);
    this.micGraph = null;
    this.micReadings = [];
    if (this.mic) this.mic.stream.getTracks().forEach((t) => t.stop());
    this.mic = null;
  }

  setMuted(muted) {
    this.muted = muted;
    if (this.mic) this.mic.track.enabled = !muted;
  }

  /** Mean square and peak of the mic over the analyser's window (about 43 ms). */
  micPowerPeak() {
    const g = this.micGraph;
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

  /** Plays the return mix (null stops it). */
  setRemote(stream) {
    this.detachRemoteGraph();
    if (!stream) {
      this.element.srcObject = null;
      return;
    }
    this.element.srcObject = stream;
    this.element.muted = this.playback === 'webaudio';
    this.element.volume = this.volume;
    const played = this.element.play();
    if (played && played.catch) played.catch(() => {});
    const ctx = this.ctx;
    if (!ctx) return;
    const source = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = TONE_FFT_SIZE;
    analyser.smoothingTimeConstant = 0; // Readings are averaged here, over WINDOW.
    const gain = ctx.createGain();
    gain.gain.value = this.playback === 'webaudio' ? this.volume : 0;
    // The sync delay: what this phone waits so it plays each frame with the speakers.
    const delay = ctx.createDelay(MAX_EXTRA_S);
    delay.delayTime.value = this.extraMs / 1000;
    source.connect(analyser);
    source.connect(delay);
    delay.connect(gain);
    gain.connect(ctx.destination);
    const remote = { source, analyser, delay, gain, tap: null, buf: new Float32Array(analyser.frequencyBinCount) };
    this.remote = remote;
    this.attachLevelTap(remote);
    this.toneReadings = [];
  }

  /** Sets the sync delay (ms). It glides over about 50 ms (a jump would click); a
   * phone playing through the media element (no Web Audio) cannot delay and says so
   * (false). */
  setExtraDelay(ms) {
    this.extraMs = ms;
    if (!this.remote || this.playback !== 'webaudio') return false;
    this.remote.delay.delayTime.setTargetAtTime(ms / 1000, this.ctx.currentTime, 0.015);
    return true;
  }

  /** The sync delay in effect (ms): 0 while the media element plays. */
  appliedExtraMs() {
    return this.remote && this.playback === 'webaudio' ? this.extraMs : 0;
  }

  /** The Web Audio output of the return mix (after the sync delay and the volume), for
   * a test that listens to what this phone plays. */
  outputNode() {
    return this.remote ? this.remote.gain : null;
  }

  /** Listens to the level of the return mix as the page's audio gets it (before the
   * sync delay, which only shifts it by what the page set, and the volume), where the
   * browser has AudioWorklet; sync.js sets it against the box's levels. */
  attachLevelTap(remote) {
    const ctx = this.ctx;
    if (!ctx.audioWorklet || typeof AudioWorkletNode === 'undefined') return;
    // Firefox ESR 128 here: with this tap on the remote stream the whole page stopped
    // answering within seconds in about half the runs (the duet test's WebDriver calls
    // timed out; 4 of 4 runs passed without it, and it passed before the tap). Its
    // playout then goes by what getSynchronizationSources() and outputLatency say.
    if (/Firefox\//.test(navigator.userAgent)) return;
    if (!this.tapModule) this.tapModule = ctx.audioWorklet.addModule('/sync-tap.js');
    this.tapModule.then(() => {
      if (this.remote !== remote) return;
      const tap = new AudioWorkletNode(ctx, 'duetbox-level-tap', { numberOfOutputs: 1 });
      const mute = ctx.createGain();
      mute.gain.value = 0;
      remote.source.connect(tap);
      tap.connect(mute);
      mute.connect(ctx.destination);
      tap.port.onmessage = (ev) => {
        if (this.onLevels && this.remote === remote) this.onLevels(ev.data);
      };
      remote.tap = tap;
      remote.tapMute = mute;
    }).catch((err) => console.warn('level tap unavailable:', err && err.message));
  }

  /**
   * Measures the round trip from this phone's speaker to its own microphone
   * (calibrate.js): plays CHIRPS chirps and records the microphone meanwhile, with the
   * return mix quiet and the voice sent to the box silent (the venue must not hear the
   * chirps). Resolves to roundTrip()'s result plus `outputMs` (what the browser says
   * its output adds, 0 where it does not); throws { code } when this browser cannot.
   */
  async calibrate() {
    const ctx = this.ctx;
    if (!ctx || !this.liveMic()) throw { code: 'no_mic' };
    if (!ctx.audioWorklet || typeof AudioWorkletNode === 'undefined') throw { code: 'calibration_unsupported' };
    if (ctx.state !== 'running') await ctx.resume();
    if (!this.calibrateModule) this.calibrateModule = ctx.audioWorklet.addModule('/calibrate-tap.js');
    await this.calibrateModule;
    const rate = ctx.sampleRate;
    const chirp = makeChirp(rate);
    const buffer = ctx.createBuffer(1, chirp.length, rate);
    buffer.copyToChannel(chirp, 0);
    // The microphone as the calibration hears it: a clone of the track, so that the
    // track the box receives can be silent meanwhile.
    const sent = this.mic.track;
    const heard = sent.clone();
    heard.enabled = true;
    const wasEnabled = sent.enabled;
    sent.enabled = false;
    const source = ctx.createMediaStreamSource(new MediaStream([heard]));
    const tap = new AudioWorkletNode(ctx, 'duetbox-calibrate-tap', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      channelCount: 1,
      channelCountMode: 'explicit',
    });
    const mute = ctx.createGain();
    mute.gain.value = 0;
    source.connect(tap);
    tap.connect(mute);
    mute.connect(ctx.destination);
    const chunks = [];
    tap.port.onmessage = (ev) => chunks.push(ev.data);
    const remoteGain = this.remote ? this.remote.gain.gain.value : null;
    if (this.remote) this.remote.gain.gain.value = 0;
    const players = [];
    try {
      // Each chirp starts on a whole frame, so its place on the timeline is exact.
      const first = Math.ceil((ctx.currentTime + CHIRP_LEAD_S) * rate);
      const starts = [];
      for (let n = 0; n < CHIRPS; n++) {
        const frame = first + Math.round(n * CHIRP_EVERY_S * rate);
        const player = ctx.createBufferSource();
        player.buffer = buffer;
        player.connect(ctx.destination);
        player.start(frame / rate);
        players.push(player);
        starts.push(frame);
      }
      const end = (starts[starts.length - 1] + chirp.length) / rate + MAX_ROUND_TRIP_MS / 1000 + 0.2;
      const outputs = [];
      while (ctx.currentTime < end) {
        if (ctx.state !== 'running') throw { code: 'calibration_interrupted' };
        outputs.push(this.outputDelayMs());
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // The last chunk in flight.
      await new Promise((resolve) => setTimeout(resolve, 150));
      if (!chunks.length) throw { code: 'calibration_unsupported' };
      const from = chunks[0].from;
      const last = chunks[chunks.length - 1];
      const recorded = new Float32Array(last.from + last.samples.length - from);
      for (const c of chunks) recorded.set(c.samples, c.from - from);
      const result = roundTrip(recorded, from, starts, chirp, rate);
      outputs.push(this.outputDelayMs());
      return { ...result, outputMs: round1(outputLatencyOf(outputs)) };
    } finally {
      tap.port.postMessage('stop');
      disconnectNodes(source, tap, mute, ...players);
      heard.stop();
      sent.enabled = wasEnabled && !this.muted;
      if (this.remote && remoteGain !== null) this.remote.gain.gain.value = remoteGain;
    }
  }

  /** Performance time (ms) at which context time `t` (s) is heard. */
  heardAt(t) {
    const ts = this.ctx.getOutputTimestamp();
    return ts.performanceTime + (t - ts.contextTime) * 1000;
  }

  detachRemoteGraph() {
    if (this.remote) disconnectNodes(this.remote.source, this.remote.delay, this.remote.gain, this.remote.tap, this.remote.tapMute);
    this.remote = null;
    this.toneReadings = [];
  }

  /** Return-mix volume, 0–1 (a short ramp avoids zipper noise while dragging). */
  setVolume(volume) {
    this.volume = volume;
    if (this.remote && this.playback === 'webaudio') {
      this.remote.gain.gain.setTargetAtTime(volume, this.ctx.currentTime, 0.02);
    } else {
      this.element.volume = volume;
    }
  }

  /** Starts the readings of the mic level and the return mix's spectrum. */
  startSampling() {
    if (!this.sampler) this.sampler = setInterval(() => this.sample(), SAMPLE_MS);
  }

  stopSampling() {
    clearInterval(this.sampler);
    this.sampler = 0;
  }

  sample() {
    const r = this.remote;
    if (r) {
      r.analyser.getFloatFrequencyData(r.buf);
      this.toneReadings.push(Float32Array.from(r.buf));
      if (this.toneReadings.length > WINDOW) this.toneReadings.shift();
    }
    const m = this.micPowerPeak();
    if (m) {
      this.micReadings.push(m.power);
      if (this.micReadings.length > WINDOW) this.micReadings.shift();
    }
  }

  /** dB level of each frequency in the received audio, averaged over the last `n`
   * readings (the last second by default; 1 = the last 100 ms); nulls before any
   * audio arrived. */
  toneLevels(freqs, n = WINDOW) {
    const list = Array.isArray(freqs) ? freqs : [freqs];
    const readings = this.toneReadings.slice(-Math.max(1, n));
    if (!this.remote || !this.ctx || !readings.length) return list.map(() => null);
    const binHz = this.ctx.sampleRate / TONE_FFT_SIZE;
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

  /** RMS level of the microphone in dBFS over the last second, or null without one. */
  micLevel() {
    if (!this.micGraph || !this.micReadings.length) return null;
    const mean = this.micReadings.reduce((a, b) => a + b, 0) / this.micReadings.length;
    return mean > 0 ? round1(Math.max(DB_FLOOR, 10 * Math.log10(mean))) : DB_FLOOR;
  }

  /** Falls back to media-element playback when Web Audio stays silent while sound is
   * arriving (see SILENT_FALLBACK_S); `inboundLevel` is getStats()' audioLevel. Call
   * once a second. */
  checkSilentPlayback(inboundLevel) {
    if (this.playback !== 'webaudio' || !this.remote || !(inboundLevel > 0.01)) {
      this.silentSeconds = 0;
      return;
    }
    const last = this.toneReadings[this.toneReadings.length - 1];
    let loudest = -Infinity;
    if (last) for (let i = 0; i < last.length; i++) if (last[i] > loudest) loudest = last[i];
    if (loudest > DB_FLOOR + 10) {
      this.silentSeconds = 0;
      return;
    }
    this.silentSeconds += 1;
    if (this.silentSeconds >= SILENT_FALLBACK_S) {
      console.warn('Web Audio hears nothing of the return mix; playing it through the audio element');
      this.playback = 'element';
      this.remote.gain.gain.value = 0;
      this.element.muted = false;
      this.element.volume = this.volume;
    }
  }
}
