#!/usr/bin/env node
// Headless-Chromium phones for duetbox's end-to-end tests.
//
// Owns the browser side of a test run: one Chromium process per phone (Chromium's fake
// microphone file is per process), the join through the page's real controls, and the
// measurements read from the page's `window.duetboxTest` hook. Knows nothing of the box
// but its URL; the Rust test starts the box, runs this and judges the JSON lines.
//
// Invariants: never downloads a browser (Debian's /usr/bin/chromium only); every
// browser it starts is closed before it exits; stdout carries only the result lines,
// everything else goes to stderr.
//
//   node phones.mjs --url https://127.0.0.1:PORT/ --out DIR --seconds N [--pin PIN]
//        [--freqs 440,660,880] [--chrome-arg ARG]...
//        --phone NAME:ROLE:WAVPATH [--expect-error CODE] [--phone ...]...
//
// WAVPATH is `-` for listeners (and for a singer on Chromium's built-in fake beep).
// `--expect-error CODE` applies to the --phone right before it: that phone joins after
// all the others are live and must be refused with CODE (e.g. room_full, wrong_pin).
//
// Output, one line per phone in command-line order:
//   {"phone":"A","role":"singer","state":"live","error":null,
//    "levels":{"440":-31.2,"660":-88.0,"880":-35.5},"mic_db":-9.1,"stats":{...}}
// levels are dB of each frequency in the received mix averaged over the last second
// (null before any audio arrived); mic_db is the mic's RMS dBFS (null for listeners).
// stderr carries two marker lines a caller may line its records up with: `mark: all
// live` (every seated phone is live, the refused ones were refused) and `mark:
// measuring` (--seconds later, right before the phones measure).
// Exit status: 0 when every phone reached what it should, 1 on any timeout or wrong
// outcome (the reason on stderr), 2 on a usage error.

import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

/** Debian's Chromium; nothing else is allowed to run here (PLATFORM.md §6). */
const CHROMIUM = '/usr/bin/chromium';
/** Deadline in ms from the Join tap to `live` (or to the expected refusal). */
const JOIN_DEADLINE_MS = 20000;
/** Deadline in ms for starting Chromium and loading the page. */
const LAUNCH_DEADLINE_MS = 20000;
/** How long (ms) the Leave tap may take while cleaning up; the box frees seats anyway. */
const LEAVE_DEADLINE_MS = 2000;
/** A phone's screen: an ordinary large phone in portrait. */
const PHONE_CONTEXT = {
  viewport: { width: 390, height: 844 },
  deviceScaleFactor: 2,
  isMobile: true,
  hasTouch: true,
  ignoreHTTPSErrors: true,
};
const BASE_ARGS = [
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

const USAGE = `usage: node phones.mjs --url URL --out DIR --seconds N [--pin PIN]
       [--freqs 440,660,880] [--chrome-arg ARG]...
       --phone NAME:ROLE:WAVPATH [--expect-error CODE] [--phone ...]...
  NAME      letters, digits, '.', '_' or '-' (also the screenshot's file name)
  ROLE      singer | listener
  WAVPATH   48 kHz WAV for the fake microphone, or - for none
  --expect-error CODE   the preceding phone must be refused with CODE`;

class UsageError extends Error {}

function log(line) {
  process.stderr.write(`${line}\n`);
}

function parseArgs(argv) {
  const opts = { url: null, out: null, seconds: null, pin: null, freqs: [440, 660, 880], chromeArgs: [], phones: [] };
  const take = (i, flag) => {
    if (i + 1 >= argv.length) throw new UsageError(`${flag} needs a value`);
    return argv[i + 1];
  };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = argv[i];
    const value = take(i, flag);
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
      case '--phone':
        opts.phones.push(parsePhone(value));
        break;
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
  return opts;
}

function parsePhone(spec) {
  // The WAV path may itself hold ':' characters, so split on the first two only.
  const a = spec.indexOf(':');
  const b = a < 0 ? -1 : spec.indexOf(':', a + 1);
  if (a < 0 || b < 0) throw new UsageError(`--phone ${spec}: expected NAME:ROLE:WAVPATH`);
  const name = spec.slice(0, a);
  const role = spec.slice(a + 1, b);
  const wavArg = spec.slice(b + 1);
  if (!/^[A-Za-z0-9._-]{1,32}$/.test(name)) throw new UsageError(`--phone ${spec}: bad NAME`);
  if (role !== 'singer' && role !== 'listener') throw new UsageError(`--phone ${spec}: ROLE must be singer or listener`);
  if (!wavArg) throw new UsageError(`--phone ${spec}: WAVPATH missing (use - for none)`);
  const wav = wavArg === '-' ? null : path.resolve(wavArg);
  if (wav && !fs.existsSync(wav)) throw new UsageError(`--phone ${spec}: no such file ${wav}`);
  return { name, role, wav, expectError: null };
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One phone: its browser, page and what it reached. */
class Phone {
  constructor(spec, opts) {
    this.spec = spec;
    this.opts = opts;
    this.browser = null;
    this.page = null;
    this.result = null;
  }

  get tag() {
    return `[${this.spec.name}]`;
  }

  async launch() {
    const args = [...BASE_ARGS, ...this.opts.chromeArgs];
    if (this.spec.wav) args.push(`--use-file-for-fake-audio-capture=${this.spec.wav}`);
    this.browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args,
      timeout: LAUNCH_DEADLINE_MS,
    });
    const context = await this.browser.newContext(PHONE_CONTEXT);
    this.page = await context.newPage();
    this.page.on('console', (msg) => {
      if (msg.type() === 'error' || msg.type() === 'warning') log(`${this.tag} console.${msg.type()}: ${msg.text()}`);
    });
    this.page.on('pageerror', (err) => log(`${this.tag} page error: ${err.message}`));
    this.page.on('crash', () => log(`${this.tag} page crashed`));
    await this.page.goto(this.opts.url, { timeout: LAUNCH_DEADLINE_MS, waitUntil: 'load' });
    await this.page.waitForFunction(() => typeof window.duetboxTest === 'object', null, { timeout: LAUNCH_DEADLINE_MS });
  }

  /** Fills the form and taps Join, like a person would. */
  async join() {
    const page = this.page;
    await page.getByLabel('Your name').fill(this.spec.name);
    const roleName = this.spec.role === 'singer' ? 'Singer' : 'Listener';
    const radio = page.getByRole('radio', { name: roleName, exact: true });
    await radio.tap();
    if (!(await radio.isChecked())) throw new Error(`${this.tag} could not select ${roleName}`);
    if (this.opts.pin !== null) await page.getByLabel(/^PIN/).fill(this.opts.pin);
    await page.getByRole('button', { name: 'Join', exact: true }).tap();
    this.joinedAt = Date.now();
  }

  async status() {
    try {
      return await this.page.evaluate(() => ({ state: window.duetboxTest.state(), error: window.duetboxTest.error() }));
    } catch (err) {
      return { state: null, error: `page unreadable: ${err.message}` };
    }
  }

  async waitLive() {
    // 'error' is final (a refusal or a local problem): no point waiting for the deadline.
    try {
      await this.page.waitForFunction(() => ['live', 'error'].includes(window.duetboxTest.state()), null, {
        timeout: JOIN_DEADLINE_MS,
        polling: 100,
      });
    } catch (_) {
      const st = await this.status();
      throw new Error(`${this.tag} not live ${JOIN_DEADLINE_MS / 1000} s after Join (state=${st.state}, error=${st.error})`);
    }
    const st = await this.status();
    if (st.state !== 'live') throw new Error(`${this.tag} refused instead of live (state=${st.state}, error=${st.error})`);
    log(`${this.tag} live after ${((Date.now() - this.joinedAt) / 1000).toFixed(1)} s`);
  }

  /** Waits for the refusal; returns an error message when the outcome is wrong. */
  async waitRefused(code) {
    try {
      await this.page.waitForFunction(
        (c) => {
          const t = window.duetboxTest;
          return t.state() === 'error' || t.state() === 'live' || t.error() === c;
        },
        code,
        { timeout: JOIN_DEADLINE_MS, polling: 100 },
      );
    } catch (_) {
      // Reported below with the state reached.
    }
    const st = await this.status();
    this.result = { phone: this.spec.name, role: this.spec.role, ...st, levels: null, mic_db: null };
    await this.screenshot();
    if (st.error !== code) return `${this.tag} expected error ${code}, reached state=${st.state} error=${st.error}`;
    log(`${this.tag} refused as expected: ${code}`);
    return null;
  }

  async measure() {
    const freqs = this.opts.freqs;
    const m = await this.page.evaluate(async (fs) => {
      const t = window.duetboxTest;
      let stats = null;
      try {
        stats = await t.stats();
      } catch (_) {
        // Stats are a bonus; the levels are what the test judges.
      }
      return { state: t.state(), error: t.error(), levels: t.toneLevels(fs), mic_db: t.micLevel(), stats };
    }, freqs);
    const levels = {};
    freqs.forEach((f, i) => {
      levels[String(f)] = m.levels[i];
    });
    this.result = {
      phone: this.spec.name,
      role: this.spec.role,
      state: m.state,
      error: m.error,
      levels,
      mic_db: m.mic_db,
      stats: m.stats,
    };
    await this.screenshot();
  }

  async screenshot() {
    try {
      await this.page.screenshot({ path: path.join(this.opts.out, `${this.spec.name}.png`) });
    } catch (err) {
      log(`${this.tag} screenshot failed: ${err.message}`);
    }
  }

  async close() {
    if (!this.browser) return;
    try {
      if (this.page) {
        const leave = this.page.getByRole('button', { name: 'Leave', exact: true });
        if (await leave.isVisible()) await leave.tap({ timeout: LEAVE_DEADLINE_MS });
      }
    } catch (_) {
      // Closing the browser drops the seat anyway.
    }
    try {
      await this.browser.close();
    } catch (err) {
      log(`${this.tag} browser close failed: ${err.message}`);
    }
    this.browser = null;
  }
}

async function run(opts) {
  fs.mkdirSync(opts.out, { recursive: true });
  const phones = opts.phones.map((spec) => new Phone(spec, opts));
  const seated = phones.filter((p) => !p.spec.expectError);
  const refused = phones.filter((p) => p.spec.expectError);
  const problems = [];
  try {
    const launched = await Promise.allSettled(phones.map((p) => p.launch()));
    launched.forEach((r, i) => {
      if (r.status === 'rejected') problems.push(`${phones[i].tag} could not start: ${r.reason.message}`);
    });
    if (problems.length) return problems;

    const joined = await Promise.allSettled(seated.map(async (p) => {
      await p.join();
      await p.waitLive();
    }));
    joined.forEach((r) => {
      if (r.status === 'rejected') problems.push(r.reason.message);
    });
    if (problems.length) return problems;

    for (const p of refused) {
      await p.join();
      const problem = await p.waitRefused(p.spec.expectError);
      if (problem) problems.push(problem);
    }

    // Markers on stderr let a caller line its own records up with this run.
    log('mark: all live');
    await sleep(opts.seconds * 1000);
    log('mark: measuring');
    await Promise.all(seated.map((p) => p.measure()));
    for (const p of phones) process.stdout.write(`${JSON.stringify(p.result)}\n`);
    return problems;
  } finally {
    if (problems.length) {
      for (const p of phones) {
        if (p.page) log(`${p.tag} reached ${JSON.stringify(await p.status())}`);
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
  if (!fs.existsSync(CHROMIUM)) {
    log(`phones.mjs: ${CHROMIUM} not found (apt-get install chromium)`);
    process.exit(1);
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
}

main();
