#!/usr/bin/env node
// Headless browser phones for duetbox's end-to-end tests: Debian's Chromium (driven by
// playwright-core) and Debian's Firefox ESR (driven by puppeteer-core over WebDriver
// BiDi).
//
// Owns the browser side of a test run: one browser process per phone (Chromium's fake
// microphone file is per process), the join through the page's real controls, what the
// phones measure (read from the page's `window.duetboxTest` hook), and the faults a
// test asks for on a phone (freezing its browser). Knows nothing of the box but its
// URL; the Rust test starts the box (and any network namespace this runs in), runs
// this and judges the JSON lines.
//
// Invariants: never downloads a browser (/usr/bin/chromium and /usr/bin/firefox-esr
// only); every browser it starts is closed (and thawed) before it exits; stdout carries
// only JSON lines, everything else goes to stderr.
//
//   node phones.mjs --url https://HOST:PORT/ --out DIR --seconds N [--pin PIN]
//        [--freqs 440,660,880] [--chrome-arg ARG]... [--pulse-server PATH]
//        [--watch] [--strict-tls] [--mix NAME:MONITOR:REVERB]... [--freeze NAME:AFTER_S:FOR_S]
//        [--delay NAME:MS]... [--loopback NAME:MS]... [--echo NAME:MS]...
//        --phone NAME:ROLE:WAVPATH[:ENGINE] [--expect-error CODE] [--phone ...]...
//
// ENGINE is chromium (default) or firefox. WAVPATH is `-` for listeners, for a singer
// on Chromium's built-in fake beep, and always for Firefox (its fake microphone is a
// 1000 Hz tone). `--expect-error CODE` applies to the --phone right before it: that
// phone joins after all the others are live and must be refused with CODE.
// `--pulse-server` is the PulseAudio socket Firefox plays through (its AudioContext
// never starts without an audio device).
// `--mix NAME:MONITOR:REVERB` moves that singer's sliders (percent) once all are live.
// `--freeze NAME:AFTER_S:FOR_S` stops that phone's whole browser (SIGSTOP to its
// process group) AFTER_S seconds after all are live, for FOR_S seconds.
// `--delay NAME:MS` (Chromium) delays that phone's return mix MS ms before its jitter
// buffer (an encoded-frame transform: a longer downlink, as the box and the page see
// it), from its first packet.
// `--loopback NAME:MS` gives that phone an acoustic path from its speaker to its own
// microphone of exactly MS ms, as the page hears it (see acousticLoopback), and has it
// tap "Measure my phone's delay" once it is live, before `mark: all live`; its result
// then carries `calibration` (the page's duetboxTest.calibration()).
// `--echo NAME:MS[:SHIFT_HZ]` makes that singer sing exactly what its page plays (a
// singer on the beat they hear): once calibrated (with --loopback NAME:MS, the page
// measures an acoustic round trip of MS), the track it sends carries what its output
// played, MS less the page's output latency later (its microphone's latency), fed in
// real time as a microphone's (see echo()); with SHIFT_HZ, ring-modulated by that
// frequency (a 1760 Hz marker is sung as 1760 ± SHIFT_HZ), so the venue's recording
// tells the voice from the backing. Its result's `night.diag.echo` counts the 10 ms
// chunks sent, those sent more than 10 ms late, and those sent silent because what
// they should carry had not reached the page yet.
// `--watch` samples every phone every 100 ms while they sing (see below).
// `--strict-tls` (Chromium): certificate errors are errors, as on a real phone; the
// page loads only if Chromium trusts the box (its NSS database, in $HOME/.pki/nssdb).
// Each result then carries `tls`: the page's certificate as Chromium saw it.
//
// Output lines (stdout), JSON:
//   {"kind":"sample","t":EPOCH_MS,"phone":"A","state":"live","levels":{"440":-31.2,...}}
//     with --watch, every 100 ms per phone (not while its browser is frozen); levels
//     are dB over the last 100 ms;
//   {"kind":"result","phone":"A","role":"singer","state":"live","error":null,
//    "levels":{"440":-31.2,"660":-88.0},"mic_db":-9.1,"identity":{...},"mix":{...},
//    "stats":{...}} one per phone at the end, in command-line order; levels are dB of
//     each frequency in the received mix averaged over the last second.
// stderr carries marker lines a caller may line its records up with: `mark: all live`
// (every seated phone is live, the refused ones were refused), `mark: frozen NAME`,
// `mark: thawed NAME`, and `mark: measuring` (--seconds after all live).
// Exit status: 0 when every phone reached what it should, 1 on any timeout or wrong
// outcome (the reason on stderr), 2 on a usage error.
//
// The karaoke night (`--night TITLE --host-pin PIN [--screen URL] [--marker-hz F] [--in-ear]`):
// once all are live, the first singer searches the songs for TITLE on its page
// (screenshot NAME-songs.png), picks the second singer as partner and taps Add; a host
// desk (a page in the first phone's browser) logs in with the host PIN and taps Start
// on the entry (with --in-ear, it taps the entry's Stage button first, making the song
// in-ear; screenshot host.png); every phone must then show the song playing
// (mark `song playing`). With --screen, the venue screen is open from then on (in the
// same browser; screenshot screen.png at the end). With --marker-hz, every phone taps
// the track it receives and notes when bursts of F Hz begin (the song's lyric-line
// markers, heard at the page's Web Audio output). Each result then carries `night`: `{lyrics: [{line, at, ms}], onsets:
// [at]}` (`at` in ms since the Unix epoch, from the page's performance clock), and a
// `{"kind":"screen","lyrics":[{line, at, ms}],"counted":[{count, at, ms}]}` line
// follows (the count-in numbers the screen showed). After the measuring the host stops
// the song and each singer's page waits for its recording and downloads it (the
// night's `recording`: the `recordings` item, the status of its page, and the mix's
// status, length and first four bytes; screenshot NAME-recordings.png).

import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** Debian's browsers; nothing else is allowed to run here (PLATFORM.md §6). */
const CHROMIUM = '/usr/bin/chromium';
const FIREFOX = '/usr/bin/firefox-esr';
/** Deadline in ms from the Join tap to `live` (or to the expected refusal). */
const JOIN_DEADLINE_MS = 20000;
/** Deadline in ms for starting a browser and loading the page. */
const LAUNCH_DEADLINE_MS = 30000;
/** How long (ms) the Leave tap may take while cleaning up; the box frees seats anyway. */
const LEAVE_DEADLINE_MS = 2000;
/** Starts of a Firefox phone before giving up: about 1 start in 10 its page's main
 * thread hangs right after the AudioContext is created (PLATFORM.md §6). */
const FIREFOX_STARTS = 3;
/** Sampling period of --watch, ms. */
const WATCH_MS = 100;
/** A phone's screen: an ordinary large phone in portrait. */
const VIEWPORT = { width: 390, height: 844 };
const CHROME_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream',
  '--autoplay-policy=no-user-gesture-required',
  '--ignore-certificate-errors',
];
const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.autoplay.default': 0,
  'media.autoplay.block-webaudio': false,
  // Raw host candidates (the box needs no mDNS), as a phone that granted the mic.
  'media.peerconnection.ice.obfuscate_host_addresses': false,
  'network.dns.disableIPv6': true,
};

const USAGE = `usage: node phones.mjs --url URL --out DIR --seconds N [--pin PIN]
       [--freqs 440,660,880] [--chrome-arg ARG]... [--pulse-server PATH]
       [--watch] [--mix NAME:MONITOR:REVERB]... [--freeze NAME:AFTER_S:FOR_S]
       --phone NAME:ROLE:WAVPATH[:ENGINE] [--expect-error CODE] [--phone ...]...
  NAME      letters, digits, '.', '_' or '-' (also the screenshot's file name)
  ROLE      singer | listener
  WAVPATH   48 kHz WAV for the fake microphone, or - for none
  ENGINE    chromium (default) | firefox
  --expect-error CODE   the preceding phone must be refused with CODE`;

class UsageError extends Error {}

function log(line) {
  process.stderr.write(`${line}\n`);
}

function out(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function parseArgs(argv) {
  const opts = {
    url: null, out: null, seconds: null, pin: null, freqs: [440, 660, 880], chromeArgs: [],
    phones: [], pulseServer: null, watch: false, strictTls: false, mixes: [], freeze: null, loopbacks: [], echoes: [],
    night: null, hostPin: null, screen: null, markerHz: null, inEar: false, delays: [],
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    if (flag === '--watch') {
      opts.watch = true;
      continue;
    }
    if (flag === '--strict-tls') {
      opts.strictTls = true;
      continue;
    }
    if (flag === '--in-ear') {
      opts.inEar = true;
      continue;
    }
    if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
    const value = argv[++i];
    switch (flag) {
      case '--url':
        opts.url = new URL(value).href;
        break;
      case '--out':
        opts.out = value;
        break;
      case '--seconds':
        opts.seconds = Number(value);
        if (!Number.isFinite(opts.seconds) || opts.seconds < 0) throw new UsageError('--seconds must be a number >= 0');
        break;
      case '--pin':
        opts.pin = value;
        break;
      case '--freqs':
        opts.freqs = value.split(',').map(Number);
        if (!opts.freqs.length || opts.freqs.some((f) => !(f > 0))) throw new UsageError('--freqs must be positive numbers, comma-separated');
        break;
      case '--chrome-arg':
        opts.chromeArgs.push(value);
        break;
      case '--pulse-server':
        opts.pulseServer = value;
        break;
      case '--mix': {
        const [name, monitor, reverb] = value.split(':');
        const pct = (v) => Number.isInteger(Number(v)) && Number(v) >= 0 && Number(v) <= 100;
        if (!name || !pct(monitor) || !pct(reverb)) throw new UsageError(`--mix ${value}: expected NAME:MONITOR:REVERB (percent)`);
        opts.mixes.push({ name, monitor: Number(monitor), reverb: Number(reverb) });
        break;
      }
      case '--freeze': {
        const [name, after, dur] = value.split(':');
        if (!name || !(Number(after) >= 0) || !(Number(dur) > 0)) throw new UsageError(`--freeze ${value}: expected NAME:AFTER_S:FOR_S`);
        opts.freeze = { name, afterMs: Number(after) * 1000, forMs: Number(dur) * 1000 };
        break;
      }
      case '--phone':
        opts.phones.push(parsePhone(value));
        break;
      case '--night':
        opts.night = value;
        break;
      case '--host-pin':
        opts.hostPin = value;
        break;
      case '--screen':
        opts.screen = new URL(value).href;
        break;
      case '--marker-hz':
        opts.markerHz = Number(value);
        if (!(opts.markerHz > 0)) throw new UsageError('--marker-hz must be a positive number');
        break;
      case '--delay': {
        const [name, ms] = value.split(':');
        if (!name || !(Number(ms) >= 0 && Number(ms) <= 1000)) throw new UsageError(`--delay ${value}: expected NAME:MS (0 to 1000)`);
        opts.delays.push({ name, ms: Number(ms) });
        break;
      }
      case '--loopback': {
        const [name, ms] = value.split(':');
        if (!name || !(Number(ms) > 0 && Number(ms) <= 400)) throw new UsageError(`--loopback ${value}: expected NAME:MS (0 to 400)`);
        opts.loopbacks.push({ name, ms: Number(ms) });
        break;
      }
      case '--echo': {
        const [name, ms, shift] = value.split(':');
        if (!name || !(Number(ms) > 0 && Number(ms) <= 400)) throw new UsageError(`--echo ${value}: expected NAME:MS[:SHIFT_HZ] (MS 0 to 400)`);
        if (shift !== undefined && !(Number(shift) > 0 && Number(shift) <= 4000)) throw new UsageError(`--echo ${value}: SHIFT_HZ must be 0 to 4000`);
        opts.echoes.push({ name, ms: Number(ms), shiftHz: shift === undefined ? 0 : Number(shift) });
        break;
      }

      case '--expect-error': {
        const last = opts.phones[opts.phones.length - 1];
        if (!last) throw new UsageError('--expect-error must follow the --phone it applies to');
        last.expectError = value;
        break;
      }
      default:
        throw new UsageError(`unknown option ${flag}`);
    }
  }
  if (!opts.url) throw new UsageError('--url is required');
  if (!opts.out) throw new UsageError('--out is required');
  if (opts.seconds === null) throw new UsageError('--seconds is required');
  if (!opts.phones.length) throw new UsageError('at least one --phone is required');
  const names = new Set();
  for (const p of opts.phones) {
    if (names.has(p.name)) throw new UsageError(`phone name ${p.name} used twice`);
    names.add(p.name);
  }
  for (const m of opts.mixes) if (!names.has(m.name)) throw new UsageError(`--mix names no phone ${m.name}`);
  for (const d of opts.delays) {
    const phone = opts.phones.find((p) => p.name === d.name);
    if (!phone) throw new UsageError(`--delay names no phone ${d.name}`);
    if (phone.engine !== 'chromium') throw new UsageError(`--delay ${d.name}: Chromium phones only`);
    phone.delayMs = d.ms;
  }
  for (const l of opts.loopbacks) {
    const phone = opts.phones.find((p) => p.name === l.name);
    if (!phone || phone.role !== 'singer') throw new UsageError(`--loopback names no singer ${l.name}`);
    phone.loopbackMs = l.ms;
  }
  for (const e of opts.echoes) {
    const phone = opts.phones.find((p) => p.name === e.name);
    if (!phone || phone.role !== 'singer' || phone.engine !== 'chromium') throw new UsageError(`--echo names no Chromium singer ${e.name}`);
    phone.echoMs = e.ms;
    phone.echoShiftHz = e.shiftHz;
  }
  if (opts.freeze && !names.has(opts.freeze.name)) throw new UsageError(`--freeze names no phone ${opts.freeze.name}`);
  if (opts.phones.some((p) => p.engine === 'firefox') && !opts.pulseServer) throw new UsageError('a firefox phone needs --pulse-server');
  if (opts.night !== null && (opts.hostPin === null || opts.phones[0].role !== 'singer' || opts.phones[0].engine !== 'chromium')) {
    throw new UsageError('--night needs --host-pin and a Chromium singer as the first phone');
  }
  return opts;
}

function parsePhone(spec) {
  // The WAV path may itself hold ':' characters: the engine is a known last field.
  let rest = spec;
  let engine = 'chromium';
  const m = /:(chromium|firefox)$/.exec(rest);
  if (m) {
    engine = m[1];
    rest = rest.slice(0, m.index);
  }
  const a = rest.indexOf(':');
  const b = a < 0 ? -1 : rest.indexOf(':', a + 1);
  if (a < 0 || b < 0) throw new UsageError(`--phone ${spec}: expected NAME:ROLE:WAVPATH[:ENGINE]`);
  const name = rest.slice(0, a);
  const role = rest.slice(a + 1, b);
  const wavArg = rest.slice(b + 1);
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(name)) throw new UsageError(`--phone ${spec}: bad NAME`);
  if (role !== 'singer' && role !== 'listener') throw new UsageError(`--phone ${spec}: ROLE must be singer or listener`);
  if (!wavArg) throw new UsageError(`--phone ${spec}: WAVPATH missing (use - for none)`);
  const wav = wavArg === '-' ? null : path.resolve(wavArg);
  if (wav && !fs.existsSync(wav)) throw new UsageError(`--phone ${spec}: no such file ${wav}`);
  if (wav && engine === 'firefox') throw new UsageError(`--phone ${spec}: Firefox's fake microphone is its own tone (use -)`);
  return { name, role, wav, engine, expectError: null, delayMs: 0, loopbackMs: 0, echoMs: 0, echoShiftHz: 0 };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Runs in the page before its own scripts (--delay): every RTCPeerConnection it makes
 * delays each received packet `delay` ms before the jitter buffer, by an encoded-frame
 * transform in a worker, set when the track arrives (Chromium ignores one set once
 * media flows). A longer downlink, as the page, its jitter buffer and the box see it.
 */
function delayReturnMix(delay) {
  // The worker also counts how late it hands frames on (diag.delay): a worker this
  // busy machine does not run in time stretches the injected delay.
  const code = `onrtctransform = (e) => {
    const t = e.transformer;
    const d = t.options.delay;
    const stats = { frames: 0, late10: 0, late50: 0, maxLate: 0 };
    let posted = 0;
    t.readable.pipeThrough(new TransformStream({
      transform(frame, out) {
        const due = performance.now() + d;
        setTimeout(() => {
          const late = performance.now() - due;
          stats.frames += 1;
          if (late > 10) stats.late10 += 1;
          if (late > 50) stats.late50 += 1;
          stats.maxLate = Math.max(stats.maxLate, Math.round(late));
          if (due - posted > 1000) { posted = due; postMessage(stats); }
          out.enqueue(frame);
        }, d);
      },
    })).pipeTo(t.writable);
  };`;
  const url = URL.createObjectURL(new Blob([code], { type: 'text/javascript' }));
  const Original = window.RTCPeerConnection;
  window.RTCPeerConnection = class extends Original {
    // At once: Chromium ignores a receiver transform set after createOffer.
    addTransceiver(...args) {
      const t = super.addTransceiver(...args);
      const worker = new Worker(url);
      worker.onmessage = (m) => { window.__delayStats = m.data; };
      t.receiver.transform = new RTCRtpScriptTransform(worker, { delay });
      return t;
    }
  };
}

/**
 * Runs in the page before its own scripts (--loopback): the room between the phone's
 * speaker and its microphone, `ms` long, inside the page's own audio graph (so its
 * length is exact: a headless browser has no speaker and no microphone to put air
 * between). Every sound the page plays from a buffer (its chirps; the return mix is
 * quiet while it calibrates) also goes through a delay of `ms` and a gain of 0.3 (the
 * air), and the page's microphone, as any AudioContext of the page hears it, is the
 * real (fake-device) microphone plus that. The track sent over WebRTC is the
 * microphone alone.
 */
function acousticLoopback(ms) {
  const mics = new WeakSet();
  const devices = navigator.mediaDevices;
  const getUserMedia = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const stream = await getUserMedia(constraints);
    stream.getAudioTracks().forEach((t) => mics.add(t));
    return stream;
  };
  const clone = MediaStreamTrack.prototype.clone;
  MediaStreamTrack.prototype.clone = function () {
    const copy = clone.call(this);
    if (mics.has(this)) mics.add(copy);
    return copy;
  };
  const connect = AudioNode.prototype.connect;
  const rooms = new WeakMap();
  const roomOf = (ctx) => {
    let room = rooms.get(ctx);
    if (!room) {
      const delay = ctx.createDelay(1);
      delay.delayTime.value = ms / 1000;
      const air = ctx.createGain();
      air.gain.value = 0.3;
      connect.call(delay, air);
      room = { delay, air };
      rooms.set(ctx, room);
    }
    return room;
  };
  AudioNode.prototype.connect = function (target, ...rest) {
    if (target instanceof AudioDestinationNode && this instanceof AudioBufferSourceNode) {
      connect.call(this, roomOf(target.context).delay);
    }
    return connect.call(this, target, ...rest);
  };
  const createMediaStreamSource = AudioContext.prototype.createMediaStreamSource;
  AudioContext.prototype.createMediaStreamSource = function (stream) {
    const source = createMediaStreamSource.call(this, stream);
    if (!stream.getAudioTracks().some((t) => mics.has(t))) return source;
    const heard = this.createGain();
    connect.call(source, heard);
    connect.call(roomOf(this).air, heard);
    return heard;
  };
}

/** One browser and page, Chromium through playwright-core. */
class ChromiumBrowser {
  constructor(phone) {
    this.phone = phone;
  }

  async launch(opts) {
    const args = [
      ...CHROME_ARGS.filter((a) => !(opts.strictTls && a === '--ignore-certificate-errors')),
      // Nothing leaves the machine: Debian's wrapper still looks up Google hosts at
      // start. The box's own address is left alone.
      `--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE ${new URL(opts.url).hostname}`,
      ...opts.chromeArgs,
      `--duetbox-phone=${this.phone.spec.name}`,
    ];
    if (this.phone.spec.wav) args.push(`--use-file-for-fake-audio-capture=${this.phone.spec.wav}`);
    this.browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args, timeout: LAUNCH_DEADLINE_MS });
    const context = await this.browser.newContext({
      viewport: VIEWPORT, deviceScaleFactor: 2, isMobile: true, hasTouch: true, ignoreHTTPSErrors: !opts.strictTls,
    });
    this.page = await context.newPage();
    if (this.phone.spec.delayMs > 0) await this.page.addInitScript(delayReturnMix, this.phone.spec.delayMs);
    if (this.phone.spec.loopbackMs > 0) await this.page.addInitScript(acousticLoopback, this.phone.spec.loopbackMs);
    this.page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') this.phone.log(`console.${msg.type()}: ${msg.text()}`);
    });
    this.page.on('pageerror', (err) => this.phone.log(`page error: ${err.message}`));
    this.page.on('crash', () => this.phone.log('page crashed'));
    const response = await this.page.goto(opts.url, { timeout: LAUNCH_DEADLINE_MS, waitUntil: 'load' });
    const details = response ? await response.securityDetails() : null;
    this.tls = details && {
      issuer: details.issuer, subject: details.subjectName, protocol: details.protocol,
      secure: await this.page.evaluate(() => window.isSecureContext),
    };
  }

  /** The browser's main process: its process group holds every process of it
   * (playwright starts it detached). Found by the marker flag it was started with. */
  pid() {
    const text = execFileSync('pgrep', ['-o', '-f', '--', `--duetbox-phone=${this.phone.spec.name}`], { encoding: 'utf8' });
    return Number(text.trim());
  }

  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  waitFor(fn, arg, timeout) {
    return this.page.waitForFunction(fn, arg, { timeout, polling: 100 });
  }

  fill(selector, value) {
    return this.page.fill(selector, value);
  }

  tap(selector) {
    return this.page.tap(selector, { timeout: JOIN_DEADLINE_MS });
  }

  async visible(selector) {
    return this.page.isVisible(selector);
  }

  screenshot(file) {
    return this.page.screenshot({ path: file });
  }

  async close() {
    await this.browser.close();
  }
}

/** One browser and page, Firefox ESR through puppeteer-core (WebDriver BiDi). */
class FirefoxBrowser {
  constructor(phone) {
    this.phone = phone;
  }

  async launch(opts) {
    this.browser = await puppeteer.launch({
      browser: 'firefox',
      executablePath: FIREFOX,
      headless: true,
      acceptInsecureCerts: true,
      timeout: LAUNCH_DEADLINE_MS,
      protocolTimeout: LAUNCH_DEADLINE_MS,
      extraPrefsFirefox: FIREFOX_PREFS,
      env: { ...process.env, PULSE_SERVER: `unix:${opts.pulseServer}` },
    });
    this.page = await this.browser.newPage();
    await this.page.setViewport(VIEWPORT);
    if (this.phone.spec.loopbackMs > 0) await this.page.evaluateOnNewDocument(acousticLoopback, this.phone.spec.loopbackMs);
    this.page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warn') this.phone.log(`console.${msg.type()}: ${msg.text()}`);
    });
    this.page.on('pageerror', (err) => this.phone.log(`page error: ${err.message}`));
    await this.page.goto(opts.url, { timeout: LAUNCH_DEADLINE_MS, waitUntil: 'load' });
  }

  pid() {
    return this.browser.process().pid;
  }

  evaluate(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  waitFor(fn, arg, timeout) {
    return this.page.waitForFunction(fn, { timeout, polling: 100 }, arg);
  }

  async fill(selector, value) {
    await this.page.$eval(selector, (el) => {
      el.value = '';
    });
    await this.page.type(selector, value);
  }

  tap(selector) {
    return this.page.click(selector);
  }

  async visible(selector) {
    return this.page.$eval(selector, (el) => !el.hidden && el.offsetParent !== null).catch(() => false);
  }

  screenshot(file) {
    return this.page.screenshot({ path: file });
  }

  async close() {
    // A hung page can make a polite close hang too.
    const proc = this.browser.process();
    await Promise.race([this.browser.close(), sleep(5000)]);
    if (proc && proc.exitCode === null) proc.kill('SIGKILL');
  }
}

/** One phone: its browser, page and what it reached. */
class Phone {
  constructor(spec, opts) {
    this.spec = spec;
    this.opts = opts;
    this.driver = null;
    this.result = null;
    this.frozen = false;
  }

  get tag() {
    return `[${this.spec.name}]`;
  }

  log(line) {
    log(`${this.tag} ${line}`);
  }

  async launch() {
    this.driver = this.spec.engine === 'firefox' ? new FirefoxBrowser(this) : new ChromiumBrowser(this);
    await this.driver.launch(this.opts);
    await this.driver.waitFor(() => typeof window.duetboxTest === 'object', null, LAUNCH_DEADLINE_MS);
  }

  async close() {
    if (!this.driver || !this.driver.browser) return;
    if (this.frozen) this.signal('SIGCONT');
    try {
      if (await this.driver.visible('#leave')) await Promise.race([this.driver.tap('#leave'), sleep(LEAVE_DEADLINE_MS)]);
    } catch (_) {
      // Closing the browser drops the seat anyway.
    }
    try {
      await this.driver.close();
    } catch (err) {
      this.log(`browser close failed: ${err.message}`);
    }
    this.driver = null;
  }

  /** Fills the form and taps Join, like a person would. */
  async join() {
    const d = this.driver;
    await d.fill('#name', this.spec.name);
    await d.tap(`input[name="role"][value="${this.spec.role}"]`);
    const checked = await d.evaluate((role) => document.querySelector(`input[name="role"][value="${role}"]`).checked, this.spec.role);
    if (!checked) throw new Error(`${this.tag} could not select ${this.spec.role}`);
    if (this.opts.pin !== null) await d.fill('#pin', this.opts.pin);
    await d.tap('#join');
    this.joinedAt = Date.now();
  }

  async status() {
    try {
      return await this.driver.evaluate(() => ({ state: window.duetboxTest.state(), error: window.duetboxTest.error() }));
    } catch (err) {
      return { state: null, error: `page unreadable: ${err.message}` };
    }
  }

  async waitLive() {
    // 'error' is final (a refusal or a local problem): no point waiting for the deadline.
    try {
      await this.driver.waitFor(() => ['live', 'error'].includes(window.duetboxTest.state()), null, JOIN_DEADLINE_MS);
    } catch (_) {
      const st = await this.status();
      throw new Error(`${this.tag} not live ${JOIN_DEADLINE_MS / 1000} s after Join (state=${st.state}, error=${st.error})`);
    }
    const st = await this.status();
    if (st.state !== 'live') throw new Error(`${this.tag} refused instead of live (state=${st.state}, error=${st.error})`);
    this.log(`live after ${((Date.now() - this.joinedAt) / 1000).toFixed(1)} s`);
  }

  /** Starts the browser, joins and waits for live; a Firefox phone whose start hangs
   * is started again (see FIREFOX_STARTS). */
  async start() {
    const starts = this.spec.engine === 'firefox' ? FIREFOX_STARTS : 1;
    for (let k = 1; ; k++) {
      try {
        await this.launch();
        await this.join();
        await this.waitLive();
        return;
      } catch (err) {
        if (k >= starts) throw err;
        this.log(`start ${k} failed (${err.message}); starting the browser again`);
        await this.close();
      }
    }
  }

  /** Waits for the refusal; returns an error message when the outcome is wrong. */
  async waitRefused(code) {
    try {
      await this.driver.waitFor(
        (c) => {
          const t = window.duetboxTest;
          return t.state() === 'error' || t.state() === 'live' || t.error() === c;
        },
        code,
        JOIN_DEADLINE_MS,
      );
    } catch (_) {
      // Reported below with the state reached.
    }
    const st = await this.status();
    this.result = { kind: 'result', phone: this.spec.name, role: this.spec.role, engine: this.spec.engine, ...st, levels: null, mic_db: null };
    await this.screenshot();
    if (st.error !== code) return `${this.tag} expected error ${code}, reached state=${st.state} error=${st.error}`;
    this.log(`refused as expected: ${code}`);
    return null;
  }

  async setMix(monitor, reverb) {
    await this.driver.evaluate(({ monitor, reverb }) => {
      for (const [id, v] of [['monitor', monitor], ['reverb', reverb]]) {
        const el = document.getElementById(id);
        el.value = String(v);
        el.dispatchEvent(new Event('input', { bubbles: true }));
      }
    }, { monitor, reverb });
    this.log(`mix set: monitor ${monitor} %, reverb ${reverb} %`);
  }

  /** Presses "Measure my phone's delay" (--loopback) and waits for the page's result.
   * A DOM click, not a tap: Firefox's WebDriver BiDi tap on it timed out here (its
   * context is already running, so no gesture is needed). */
  async calibrate() {
    await this.driver.evaluate(() => {
      setTimeout(() => document.getElementById('calibrate').click(), 0);
    });
    const deadline = Date.now() + 20000;
    for (;;) {
      const c = await this.driver.evaluate(() => window.duetboxTest.calibration());
      if (c.last) {
        this.log(`calibration: ${JSON.stringify(c)}`);
        return c;
      }
      if (Date.now() > deadline) throw new Error(`${this.tag}: no calibration result within 20 s`);
      await sleep(200);
    }
  }

  /** --echo: from now on the phone sings what its page plays, as a singer in
   * headphones would: what its output plays at time t (the context's output timestamp,
   * as the marker tap hears it) is what its microphone picks up at t, and the track it
   * sends carries it `ms` less the page's output latency later (the microphone's own
   * latency, as the page's calibration over an acoustic path of `ms` reports it). With
   * `shiftHz`, ring-modulated by a `shiftHz` cosine (each tone f becomes f ± shiftHz),
   * so that what it sings can be told from the backing it sings to in the venue.
   *
   * The track is a MediaStreamTrackGenerator fed 10 ms of 48 kHz at a time from a
   * worker (the page's main thread sent 24 to 112 chunks a song more than 10 ms late,
   * the worker 2 to 20), each chunk once its 10 ms have passed and never before (from
   * a timer, which fires late, never early), stamped with the moment its last sample
   * was captured, as a microphone's: Chromium's sender reports take that stamp as the
   * capture time (with
   * the chunk's start instead, the box read the one-way time 11 ms long). The page's
   * Web Audio output as the track (a MediaStreamAudioDestinationNode) would not do:
   * Chromium stamps what its graph renders when it renders it, ahead of the output and
   * unevenly, and the box read such a phone's one-way time 1 to 10 ms long where
   * fake-capture phones read 0.7 to 3.5 ms; through the test's delay link the two
   * read alike (71.1 to 72.3 ms for this singer, 71.4 for a fake-capture phone). */
  async echo(ms, shiftHz) {
    const r = await this.driver.evaluate(async ([roundTripMs, shift]) => {
      const { ctx, node } = window.duetboxTest.output();
      const rate = ctx.sampleRate;
      // What the output adds: what the page's calibration measured and told the box
      // (its median over the chirps). Chromium over PulseAudio says 5 ms at some
      // moments and 40 ms at others in like runs here; with a reading of its own taken
      // later, this singer's voice twice landed 31 ms late, as a 35 ms disagreement
      // between the two readings puts it. Whether a
      // real phone's output latency holds from its calibration to its song needs a
      // real phone. Without a calibration, the median of half a second's readings.
      const cal = window.duetboxTest.calibration().last;
      let outputMs;
      if (cal && cal.ok && typeof cal.outputMs === 'number') {
        outputMs = Math.min(cal.outputMs, roundTripMs);
      } else {
        const readings = [];
        for (let i = 0; i < 11; i++) {
          readings.push(((ctx.baseLatency || 0) + (ctx.outputLatency || 0)) * 1000);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        readings.sort((a, b) => a - b);
        outputMs = readings[5];
      }
      const captureMs = Math.max(0, roundTripMs - outputMs);
      let sung = node;
      if (shift > 0) {
        const ring = ctx.createGain();
        ring.gain.value = 0;
        const carrier = ctx.createOscillator();
        carrier.frequency.value = shift;
        carrier.connect(ring.gain);
        carrier.start();
        node.connect(ring);
        sung = ring;
      }
      // What the output plays, by context frame: a recorder on the audio thread posts
      // every 256 frames straight to the worker that feeds the track.
      const code = `class Rec extends AudioWorkletProcessor {
        constructor() {
          super();
          this.buf = new Float32Array(256); this.n = 0; this.from = 0; this.out = null;
          this.port.onmessage = (ev) => { this.out = ev.data; };
        }
        process(inputs) {
          const x = inputs[0] && inputs[0][0];
          if (this.n === 0) this.from = currentFrame;
          for (let i = 0; i < 128; i++) this.buf[this.n + i] = x ? x[i] : 0;
          this.n += 128;
          if (this.n === 256) {
            if (this.out) this.out.postMessage({ from: this.from, samples: this.buf.slice() });
            this.n = 0;
          }
          return true;
        }
      }
      registerProcessor('duetbox-echo-recorder', Rec);`;
      await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })));
      const rec = new AudioWorkletNode(ctx, 'duetbox-echo-recorder', { numberOfOutputs: 1, channelCount: 1, channelCountMode: 'explicit' });
      const mute = ctx.createGain();
      mute.gain.value = 0;
      sung.connect(rec);
      rec.connect(mute);
      mute.connect(ctx.destination);
      // The track is fed from a worker, on its own timers: the page's main thread
      // (the page's own work, the test's polling) would delay chunks by tens of ms.
      const feeder = `
        const size = 1 << 17;
        const ring = new Float32Array(size);
        let upTo = 0, map = null, writer = null, rate = 0, captureMs = 0, shift = 0, t0 = 0;
        const state = { chunks: 0, missing: 0, late: 0 };
        // The context frame (fractional) the output plays at window time t.
        const frameAt = (t) => (map.contextTime + (t - map.performanceTime) / 1000) * rate;
        const write = () => {
          const now = performance.now();
          while (t0 + (state.chunks + 1) * 10 <= now) {
            // Chunk n: what the output played from 10 n − capture on (window time).
            const n = state.chunks;
            const f0 = frameAt(t0 + shift + n * 10 - captureMs);
            const step = rate / 48000;
            const data = new Float32Array(480);
            if (!map || Math.floor(f0 + 480 * step) + 1 > upTo) state.missing += 1;
            else {
              for (let i = 0; i < 480; i++) {
                const f = f0 + i * step;
                const k = Math.floor(f);
                const a = ring[k % size];
                data[i] = a + (ring[(k + 1) % size] - a) * (f - k);
              }
            }
            if (now - (t0 + (n + 1) * 10) > 10) state.late += 1;
            writer.write(new AudioData({
              format: 'f32-planar', sampleRate: 48000, numberOfFrames: 480, numberOfChannels: 1,
              timestamp: Math.round((t0 + (n + 1) * 10) * 1000), data,
            }));
            state.chunks += 1;
          }
          setTimeout(write, Math.max(0, t0 + (state.chunks + 1) * 10 - performance.now()));
        };
        onmessage = (ev) => {
          const d = ev.data;
          if (d.map) map = d.map;
          if (d.writable) {
            writer = d.writable.getWriter();
            ({ rate, captureMs } = d);
            // Window time less this worker's: their time origins differ.
            shift = performance.timeOrigin - d.windowOrigin;
            d.port.onmessage = (m) => {
              const { from, samples } = m.data;
              for (let i = 0; i < samples.length; i++) ring[(from + i) % size] = samples[i];
              upTo = Math.max(upTo, from + samples.length);
            };
            t0 = performance.now();
            write();
            setInterval(() => postMessage(state), 500);
          }
        };`;
      const worker = new Worker(URL.createObjectURL(new Blob([feeder], { type: 'text/javascript' })));
      const generator = new MediaStreamTrackGenerator({ kind: 'audio' });
      const channel = new MessageChannel();
      rec.port.postMessage(channel.port1, [channel.port1]);
      const mapNow = () => {
        const ts = ctx.getOutputTimestamp();
        return { contextTime: ts.contextTime, performanceTime: ts.performanceTime };
      };
      worker.postMessage({ map: mapNow() });
      worker.postMessage({
        writable: generator.writable, port: channel.port2, rate, captureMs, windowOrigin: performance.timeOrigin,
      }, [generator.writable, channel.port2]);
      setInterval(() => worker.postMessage({ map: mapNow() }), 50);
      window.__echo = { chunks: 0, missing: 0, late: 0 };
      worker.onmessage = (ev) => { window.__echo = ev.data; };
      window.__echoWorker = worker;
      const sender = window.duetboxTest.peerConnection().getSenders().find((x) => x.track && x.track.kind === 'audio');
      await sender.replaceTrack(generator);
      return { outputMs, captureMs };
    }, [ms, shiftHz]);
    this.log(`echo: sings what it plays; its microphone adds ${r.captureMs.toFixed(1)} ms (${ms} ms round trip, ${r.outputMs.toFixed(1)} ms output)${shiftHz > 0 ? `, shifted by ${shiftHz} Hz` : ''}`);
  }

  /** One --watch sample: state and the tone levels of the last 100 ms. */
  async sample() {
    if (this.frozen) return;
    const freqs = this.opts.freqs;
    const m = await this.driver.evaluate((fs) => ({ state: window.duetboxTest.state(), levels: window.duetboxTest.toneLevels(fs, 1) }), freqs)
      .catch(() => null);
    if (!m || this.frozen) return;
    const levels = {};
    freqs.forEach((f, i) => {
      levels[String(f)] = m.levels[i];
    });
    out({ kind: 'sample', t: Date.now(), phone: this.spec.name, state: m.state, levels });
  }

  async measure() {
    const freqs = this.opts.freqs;
    const m = await this.driver.evaluate(async (fs) => {
      const t = window.duetboxTest;
      let stats = null;
      try {
        stats = await t.stats();
      } catch (_) {
        // Stats are a bonus; the levels are what the test judges.
      }
      return {
        state: t.state(), error: t.error(), levels: t.toneLevels(fs), mic_db: t.micLevel(), stats,
        identity: t.identity(), mix: t.mix(), sync: t.sync(),
      };
    }, freqs);
    const levels = {};
    freqs.forEach((f, i) => {
      levels[String(f)] = m.levels[i];
    });
    this.result = {
      kind: 'result',
      phone: this.spec.name,
      role: this.spec.role,
      engine: this.spec.engine,
      state: m.state,
      error: m.error,
      levels,
      mic_db: m.mic_db,
      identity: m.identity,
      mix: m.mix,
      sync: m.sync,
      stats: m.stats,
      tls: this.driver.tls ?? null,
      calibration: this.calibration ?? null,
    };
    await this.screenshot();
  }

  async screenshot() {
    try {
      await this.driver.screenshot(path.join(this.opts.out, `${this.spec.name}.png`));
    } catch (err) {
      this.log(`screenshot failed: ${err.message}`);
    }
  }

  /** The first singer's part of the night: search, pick the partner, add. */
  async addSong(title, partner) {
    const page = this.driver.page;
    await page.fill('#song-search', title);
    const row = page.locator('#song-results li', { hasText: title }).first();
    await row.waitFor({ timeout: JOIN_DEADLINE_MS });
    if (partner) {
      await page.waitForFunction((name) => [...document.querySelectorAll('#partner option')].some((o) => o.textContent === name), partner.spec.name, { timeout: JOIN_DEADLINE_MS });
      const value = await page.evaluate((name) => [...document.querySelectorAll('#partner option')].find((o) => o.textContent === name).value, partner.spec.name);
      await page.selectOption('#partner', value);
    }
    await page.locator('#songs-card').screenshot({ path: path.join(this.opts.out, `${this.spec.name}-songs.png`) });
    await row.locator('button').tap();
    await page.waitForFunction((t) => {
      const q = window.duetboxTest.queue();
      return q && q.entries.some((e) => e.title === t);
    }, title, { timeout: JOIN_DEADLINE_MS });
    this.log(`added ${title}${partner ? ` with ${partner.spec.name}` : ''}`);
  }

  /** Starts listening to what this phone plays (its Web Audio output, after the sync
   * delay) for onsets of `hz` bursts (the song's markers), each timed by the context's
   * own clock and output timestamp: when the phone's output plays it. */
  async tapMarkers(hz) {
    await this.driver.evaluate(async (f) => {
      const { ctx, node } = window.duetboxTest.output();
      // An AudioWorklet sees each 128-frame quantum at its context time: no guessing
      // at a processor's buffering.
      const code = `class Tap extends AudioWorkletProcessor {
        constructor(o) {
          super();
          this.k = 2 * Math.cos((2 * Math.PI * o.processorOptions.f) / sampleRate);
          this.ring = new Float32Array(4096);
          this.idx = 0; this.t0 = null; this.quiet = 0; this.loud = 0; this.candidate = 0;
        }
        process(inputs) {
          const x = inputs[0] && inputs[0][0];
          if (!x) return true;
          // The context advances 128 frames a quantum: frame i plays at t0 + i / rate.
          if (this.t0 === null) this.t0 = currentTime;
          for (let i = 0; i < x.length; i++) {
            this.ring[this.idx % 4096] = x[i];
            this.idx += 1;
            if (this.idx % 256 === 0) this.block(this.idx - 256);
          }
          return true;
        }
        // Goertzel over a Hann window: the amplitude of f in frames [from, from + n).
        amp(from, n) {
          let s1 = 0, s2 = 0;
          for (let i = 0; i < n; i++) {
            const w = 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (n - 1));
            const s0 = this.ring[(from + i) % 4096] * w + this.k * s1 - s2;
            s2 = s1; s1 = s0;
          }
          return (4 * Math.sqrt(Math.max(0, s1 * s1 + s2 * s2 - this.k * s1 * s2))) / n;
        }
        block(start) {
          // A burst lasts 120 ms (22 blocks of 256): four loud blocks in a row after
          // 200 ms of quiet are one; then its onset is found to the frame.
          if (this.amp(start, 256) > 0.08) {
            if (this.loud === 0) this.candidate = start;
            this.loud += 1;
            if (this.loud === 4 && this.quiet >= 40) {
              this.port.postMessage(this.t0 + this.onset(this.candidate) / sampleRate);
            }
            if (this.loud >= 4) this.quiet = 0;
          } else {
            if (this.loud < 4) this.quiet += this.loud;
            this.loud = 0;
            this.quiet += 1;
          }
        }
        // The first 128-frame window (sliding by 4) at half the burst's amplitude: its
        // middle is the onset (the same rule as the test's reading of the speakers).
        onset(c) {
          const half = 0.5 * this.amp(c + 512, 128);
          for (let s = c - 256; s <= c + 256; s += 4) if (this.amp(s, 128) >= half) return s + 64;
          return c;
        }
      }
      registerProcessor('duetbox-marker-tap', Tap);`;
      await ctx.audioWorklet.addModule(URL.createObjectURL(new Blob([code], { type: 'text/javascript' })));
      const tap = new AudioWorkletNode(ctx, 'duetbox-marker-tap', { processorOptions: { f } });
      const mute = ctx.createGain();
      mute.gain.value = 0;
      node.connect(tap);
      tap.connect(mute);
      mute.connect(ctx.destination);
      window.__markers = { onsets: [], tap, heard: [], underruns: [] };
      // When the page's output underran (its renderer got no CPU in time: Chromium's
      // AudioContext.playbackStats, updated about once a second), epoch ms: each one
      // leaves the WebRTC audio feeding the graph later until the sync loop pulls it
      // back. A phone has a CPU of its own; here the browsers share two cores.
      let underran = ctx.playbackStats ? ctx.playbackStats.underrunEvents : null;
      if (underran !== null) {
        setInterval(() => {
          const st = ctx.playbackStats;
          if (st.underrunEvents > underran) {
            window.__markers.underruns.push([performance.timeOrigin + performance.now(), st.underrunEvents - underran, st.underrunDuration]);
            underran = st.underrunEvents;
          }
        }, 100);
      }
      // What the page believes it plays (its song position from the box's song clock
      // and its receiver, the sync delay and the output latency), every 5 ms: the
      // phone's own account, set against what the tap hears.
      setInterval(() => {
        const ms = window.duetboxTest.heardSongMs();
        if (typeof ms === 'number') window.__markers.heard.push([performance.now(), ms]);
        if (window.__markers.heard.length > 8000) window.__markers.heard.shift();
      }, 5);
      tap.port.onmessage = (ev) => {
        // The context's output timestamp: which context time the output plays at which
        // performance time.
        const ts = ctx.getOutputTimestamp();
        window.__markers.onsets.push(performance.timeOrigin + ts.performanceTime + (ev.data - ts.contextTime) * 1000);
      };
    }, hz);
  }

  async nightReport() {
    return this.driver.evaluate(async () => {
      const pc = window.duetboxTest.peerConnection();
      const diag = { playout: null, ctx: null };
      try {
        const st = await pc.getStats();
        st.forEach((v) => { if (v.type === 'media-playout') diag.playout = v; });
        const { ctx } = window.duetboxTest.output();
        diag.ctx = { base: ctx.baseLatency, out: ctx.outputLatency, rate: ctx.sampleRate };
        diag.echo = window.__echo || null;
        diag.delay = window.__delayStats || null;
      } catch (_) { /* diagnostics only */ }
      const m = window.__markers;
      // When the page believed each line's first millisecond played (epoch ms): between
      // two readings that straddle it and moved with the clock (a jump of the page's
      // account is no time it believed), however far apart this busy page took them.
      const believed = (ms) => {
        const h = m ? m.heard : [];
        for (let i = 1; i < h.length; i++) {
          const [t0, s0] = h[i - 1];
          const [t1, s1] = h[i];
          const steady = Math.abs(s1 - s0 - (t1 - t0)) < 20 && t1 - t0 < 1000;
          if (s0 < ms && s1 >= ms && steady) return performance.timeOrigin + t0 + ((ms - s0) / (s1 - s0)) * (t1 - t0);
        }
        return null;
      };
      const lyrics = window.duetboxTest.lyricsAppeared();
      return {
        lyrics: lyrics.map((a) => ({ line: a.line, at: performance.timeOrigin + a.at, ms: a.ms })),
        onsets: m ? m.onsets : [],
        underruns: m ? m.underruns : [],
        believed: window.duetboxTest.lyricLines().map((start) => believed(start)).filter((t) => t !== null),
        diag,
        sync: window.duetboxTest.sync(),
      };
    });
  }

  /** After the song: waits for its recording on this page, takes the recording's
   * screenshot (the first singer), then downloads its page and mix from the page. */
  async takeRecording(shot) {
    await this.driver.waitFor(() => window.duetboxTest.recordings().length > 0, null, JOIN_DEADLINE_MS);
    if (shot) await this.driver.page.locator('#recordings-card').screenshot({ path: path.join(this.opts.out, `${this.spec.name}-recordings.png`) });
    return this.driver.evaluate(async () => {
      const r = window.duetboxTest.recordings().at(-1);
      const page = await fetch(r.url);
      const mix = await fetch(`${r.url}/mix.opus`);
      const bytes = new Uint8Array(await mix.arrayBuffer());
      const shown = [...document.querySelectorAll('#recordings-list a')].map((a) => a.getAttribute('href'));
      return {
        ...r, page: page.status, mix_status: mix.status, mix_bytes: bytes.length,
        magic: String.fromCharCode(...bytes.slice(0, 4)), shown,
      };
    });
  }

  /** Sends `signal` to every process of this phone's browser. */
  signal(signal) {
    process.kill(-this.driver.pid(), signal);
  }
}

/** Samples every phone every WATCH_MS until `untilMs` (epoch). */
async function watch(phones, untilMs) {
  while (Date.now() < untilMs) {
    const next = Date.now() + WATCH_MS;
    await Promise.all(phones.map((p) => p.sample()));
    await sleep(Math.max(0, next - Date.now()));
  }
}

/** Freezes one phone's browser for a while, as a phone whose OS stops the tab. */
async function freeze(phone, { afterMs, forMs }) {
  await sleep(afterMs);
  phone.frozen = true;
  phone.signal('SIGSTOP');
  log(`mark: frozen ${phone.spec.name}`);
  await sleep(forMs);
  phone.signal('SIGCONT');
  phone.frozen = false;
  log(`mark: thawed ${phone.spec.name}`);
}

/** The host's part: open the desk in `phone`'s browser, log in, start the entry. */
async function hostStarts(phone, opts) {
  const context = await phone.driver.browser.newContext({ viewport: { width: 1280, height: 900 }, ignoreHTTPSErrors: !opts.strictTls });
  const desk = await context.newPage();
  desk.on('pageerror', (err) => log(`[host] page error: ${err.message}`));
  await desk.goto(new URL('host', opts.url).href, { timeout: LAUNCH_DEADLINE_MS });
  await desk.fill('#pin', opts.hostPin);
  await desk.click('#login-button');
  await desk.waitForFunction(() => window.duetboxHost.state === 'desk' && window.duetboxHost.queue, null, { timeout: JOIN_DEADLINE_MS });
  const entry = desk.locator('#queue li', { hasText: opts.night }).first();
  if (opts.inEar) {
    await entry.locator('button.mode').click({ timeout: JOIN_DEADLINE_MS });
    await desk.waitForFunction(() => {
      const q = window.duetboxHost.queue;
      return q && q.entries.some((e) => e.mode === 'in_ear');
    }, null, { timeout: JOIN_DEADLINE_MS });
    log('[host] the song is in-ear');
  }
  const start = entry.locator('button.primary');
  await start.click({ timeout: JOIN_DEADLINE_MS });
  await desk.waitForFunction(() => {
    const q = window.duetboxHost.queue;
    return q && q.song && q.song.state === 'playing';
  }, null, { timeout: JOIN_DEADLINE_MS });
  log('[host] started the song');
  return desk;
}

async function night(opts, singers) {
  const [first, partner] = singers;
  if (opts.inEar) {
    // The box measures each singer's one-way time from its sender reports (every 1 to
    // 5 s) before the song starts, as it has for a phone that joined minutes before
    // its song: the recording's voice shift is taken when the song starts.
    await Promise.all(singers.map((p) => p.driver.waitFor(() => typeof window.duetboxTest.sync().one_way_ms === 'number', null, JOIN_DEADLINE_MS)));
    log('[host] every singer\'s one-way time is measured');
  }
  await first.addSong(opts.night, partner || null);
  const desk = await hostStarts(first, opts);
  if (opts.markerHz) await Promise.all(singers.map((p) => p.tapMarkers(opts.markerHz)));
  await Promise.all(singers.map((p) => p.driver.waitFor(() => {
    const q = window.duetboxTest.queue();
    return q && q.song && q.song.state === 'playing';
  }, null, JOIN_DEADLINE_MS)));
  let screen = null;
  if (opts.screen) {
    const context = await first.driver.browser.newContext({ viewport: { width: 1280, height: 720 } });
    screen = await context.newPage();
    screen.on('pageerror', (err) => log(`[screen] page error: ${err.message}`));
    await screen.goto(opts.screen, { timeout: LAUNCH_DEADLINE_MS });
  }
  log('mark: song playing');
  // The desk as the host sees it with the song playing.
  await sleep(1500);
  await desk.screenshot({ path: path.join(opts.out, 'host.png') });
  return { desk, screen };
}

async function run(opts) {
  fs.mkdirSync(opts.out, { recursive: true });
  const phones = opts.phones.map((spec) => new Phone(spec, opts));
  const seated = phones.filter((p) => !p.spec.expectError);
  const refused = phones.filter((p) => p.spec.expectError);
  const problems = [];
  try {
    const started = await Promise.allSettled(seated.map((p) => p.start()));
    started.forEach((r) => {
      if (r.status === 'rejected') problems.push(r.reason.message);
    });
    if (problems.length) return problems;

    for (const p of refused) {
      try {
        await p.launch();
        await p.join();
      } catch (err) {
        problems.push(`${p.tag} could not start: ${err.message}`);
        continue;
      }
      const problem = await p.waitRefused(p.spec.expectError);
      if (problem) problems.push(problem);
    }
    if (problems.length) return problems;

    for (const m of opts.mixes) await phones.find((p) => p.spec.name === m.name).setMix(m.monitor, m.reverb);
    for (const p of seated.filter((q) => q.spec.loopbackMs > 0)) {
      try {
        p.calibration = await p.calibrate();
      } catch (err) {
        problems.push(err.message);
      }
    }
    if (problems.length) return problems;
    for (const p of seated.filter((q) => q.spec.echoMs > 0)) await p.echo(p.spec.echoMs, p.spec.echoShiftHz);

    // Markers on stderr let a caller line its own records up with this run.
    log('mark: all live');
    const singers = seated.filter((p) => p.spec.role === 'singer');
    const theNight = opts.night !== null ? await night(opts, singers) : null;
    const until = Date.now() + opts.seconds * 1000;
    const tasks = [];
    if (opts.freeze) tasks.push(freeze(phones.find((p) => p.spec.name === opts.freeze.name), opts.freeze));
    tasks.push(opts.watch ? watch(seated, until) : sleep(opts.seconds * 1000));
    await Promise.all(tasks);
    await sleep(Math.max(0, until - Date.now()));
    log('mark: measuring');
    await Promise.all(seated.map((p) => p.measure()));
    if (theNight) {
      for (const p of singers) p.result.night = await p.nightReport();
      if (theNight.screen) {
        await theNight.screen.screenshot({ path: path.join(opts.out, 'screen.png') });
        const seen = await theNight.screen.evaluate(() => {
          const l = window.duetboxScreen.lyrics;
          const epoch = (a) => ({ ...a, at: performance.timeOrigin + a.at });
          return { lyrics: l.appeared.map(epoch), counted: l.counted.map(epoch) };
        });
        out({ kind: 'screen', ...seen });
      }
      // The host stops the song: its recording reaches both singers' pages. On a slow
      // host the 21 s song may have ended by itself meanwhile (Stop is then disabled);
      // its recording ends with it.
      try {
        await theNight.desk.click('#stop', { timeout: 5000 });
        log('mark: song stopped');
      } catch (err) {
        const ended = await theNight.desk.evaluate(() => {
          const q = window.duetboxHost.queue;
          return !(q && q.song);
        });
        if (!ended) throw err;
        log('mark: song ended');
      }
      for (const [k, p] of singers.entries()) p.result.night.recording = await p.takeRecording(k === 0);
    }
    for (const p of phones) out(p.result);
    return problems;
  } finally {
    if (problems.length) {
      for (const p of phones) {
        if (p.driver) log(`${p.tag} reached ${JSON.stringify(await p.status())}`);
      }
    }
    await Promise.all(phones.map((p) => p.close()));
  }
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (err) {
    log(err instanceof UsageError ? `phones.mjs: ${err.message}\n${USAGE}` : String(err));
    process.exit(2);
  }
  for (const [engine, exe] of [['chromium', CHROMIUM], ['firefox', FIREFOX]]) {
    if (opts.phones.some((p) => p.engine === engine) && !fs.existsSync(exe)) {
      log(`phones.mjs: ${exe} not found (run scripts/setup.sh test)`);
      process.exit(1);
    }
  }
  let problems;
  try {
    problems = await run(opts);
  } catch (err) {
    problems = [`phones.mjs: ${err.stack || err.message}`];
  }
  if (problems.length) {
    for (const p of problems) log(`FAIL ${p}`);
    process.exit(1);
  }
  // Puppeteer may leave handles open; the run is over.
  process.exit(0);
}

main();
