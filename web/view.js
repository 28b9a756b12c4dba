// What the singer sees: the state banner with a sentence for every error, the join
// form, the stage (mic meter, sliders, the room, the delay figures).
//
// Knows the DOM of index.html and nothing of the box or of audio: main.js tells it
// what to show. Room rows come from protocol.roomRows.

import { roomRows } from './protocol.js';
import { describeOffset } from './sync.js';

/** Bottom of the visible level bars in dBFS; quieter than this shows as empty. */
const METER_FLOOR_DB = -60;
/** Level (dBFS peak) above which the mic bar turns red: close to clipping. */
const METER_HOT_DB = -3;
/** Level (dBFS peak) above which the mic bar turns yellow: a healthy loud voice. */
const METER_MID_DB = -18;
/** Room rows shown before the rest are summarised as "+N more". */
const ROOM_ROWS_MAX = 12;

/** Big word on the banner per state. */
const STATE_WORDS = {
  idle: 'Ready',
  connecting: 'Connecting',
  live: 'Live',
  reconnecting: 'Reconnecting',
  error: 'Error',
};

export function dbToPercent(db) {
  if (typeof db !== 'number' || !Number.isFinite(db)) return 0;
  return Math.max(0, Math.min(100, (1 - db / METER_FLOOR_DB) * 100));
}

function fmtMs(v) {
  return typeof v === 'number' && Number.isFinite(v) ? `${Math.round(v)} ms` : '\u2013';
}

/** A human sentence for an error code. Box codes are from protocol.md; the others are
 * the page's own: insecure, mic_denied, no_mic, mic_busy, mic_failed, no_webrtc,
 * unreachable, connection_lost, link_weak, link_failed, mic_lost, client. */
export function explain(code, { role, pin, detail } = {}) {
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
      return 'This browser cannot do live audio. Use an up-to-date Chrome (Android), Safari (iPhone) or Firefox.';
    case 'room_full':
      return role === 'singer'
        ? 'All singer seats are taken. Join as a Listener, or try again when a singer leaves.'
        : 'The box has no room for more listeners right now. Try again later.';
    case 'wrong_pin':
      if (detail && /try again in/.test(detail)) return `Too many wrong PINs. ${detail.replace(/^.*(try again in [0-9]+ s).*$/, (_, t) => `${t[0].toUpperCase()}${t.slice(1)}.`)}`;
      return pin
        ? 'Wrong PIN. Check the PIN with the host, then tap Join again.'
        : 'This box needs a PIN. Ask the host for it, type it below and tap Join again.';
    case 'version':
      return 'This page is out of date. Reload it.';
    case 'too_large':
      return 'The box refused a message from this page. Reload the page.';
    case 'rate_limited':
      return 'This page sent the box too much at once. Reload the page.';
    case 'bad_sdp':
      return 'The box cannot use this browser\u2019s audio. Try an up-to-date Chrome, Safari or Firefox.';
    case 'replaced':
      return 'You were connected again from another tab or phone, so this one stopped.';
    case 'kicked':
      return 'The host took you off the stage. Tap Join to come back.';
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

export class View {
  constructor(doc) {
    const byId = (id) => doc.getElementById(id);
    this.doc = doc;
    this.ui = {
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
      slot: byId('my-slot'),
      roomList: byId('room-list'),
      roomCount: byId('room-count'),
      roomEmpty: byId('room-empty'),
      latRtt: byId('lat-rtt'),
      latBox: byId('lat-box'),
      latOneWay: byId('lat-oneway'),
      latPhone: byId('lat-phone'),
      latLoss: byId('lat-loss'),
      latSync: byId('lat-sync'),
      latCalibration: byId('lat-calibration'),
      calibrate: byId('calibrate'),
      calibrateNote: byId('calibrate-note'),
      leave: byId('leave'),
      recordingsCard: byId('recordings-card'),
      recordingsList: byId('recordings-list'),
      audio: byId('remote-audio'),
    };
    this.roomKey = '';
    this.meterLastAria = 0;
    /** The calibration hint as the page has it (shown again after a failure). */
    this.calibrateHint = this.ui.calibrateNote.textContent;
  }

  /** The songs this phone sang in, newest first: each a link to its page (files and
   * a QR code) and its code here too. `recordings` as the box sends them. */
  recordings(recordings) {
    const ui = this.ui;
    ui.recordingsList.textContent = '';
    const links = [...recordings].reverse().filter((r) => /^\/recordings\/[0-9a-f]{32}$/.test(r.url));
    for (const r of links) {
      const li = this.doc.createElement('li');
      const a = this.doc.createElement('a');
      a.href = r.url;
      a.target = '_blank';
      a.rel = 'noopener';
      a.className = 'recording-link';
      a.textContent = `${r.title} (${Math.round(r.seconds)} s)`;
      const qr = this.doc.createElement('img');
      qr.src = `${r.url}/qr.svg`;
      qr.alt = `QR code: ${r.title}`;
      qr.width = 120;
      qr.height = 120;
      qr.className = 'recording-qr';
      li.appendChild(a);
      li.appendChild(qr);
      ui.recordingsList.appendChild(li);
    }
    ui.recordingsCard.hidden = links.length === 0;
  }

  /** The banner and which view shows. `text` is the whole message. */
  banner(state, text, link) {
    const ui = this.ui;
    ui.banner.className = `banner is-${state}`;
    ui.stateWord.textContent = STATE_WORDS[state] || state;
    ui.stateMsg.textContent = text;
    if (link) {
      ui.stateLink.href = link;
      ui.stateLink.textContent = link;
      ui.stateLink.hidden = false;
    } else {
      ui.stateLink.hidden = true;
    }
    const onStage = state === 'connecting' || state === 'live' || state === 'reconnecting';
    ui.joinView.hidden = onStage;
    ui.stageView.hidden = !onStage;
    this.doc.title = state === 'idle' ? 'duetbox' : `${STATE_WORDS[state]} \u2013 duetbox`;
  }

  message(text) {
    this.ui.stateMsg.textContent = text;
  }

  leaveLabel(everLive) {
    this.ui.leave.textContent = everLive ? 'Leave' : 'Cancel';
  }

  nameError(text) {
    const ui = this.ui;
    ui.nameError.textContent = text;
    ui.nameError.hidden = !text;
    ui.name.setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  roleHint(role) {
    this.ui.roleHint.textContent = role === 'singer'
      ? 'Your phone is your microphone. Use headphones.'
      : 'Hear the stage on your phone. No microphone needed.';
  }

  selectedRole() {
    const checked = this.ui.form.querySelector('input[name="role"]:checked');
    return checked && checked.value === 'listener' ? 'listener' : 'singer';
  }

  selectRole(role) {
    this.ui.form.querySelector(`input[name="role"][value="${role}"]`).checked = true;
  }

  /** Shows a slider's value (0–100) as a percentage. */
  slider(input, out) {
    out.textContent = `${input.value} %`;
    input.setAttribute('aria-valuetext', `${input.value} percent`);
  }

  setSlider(input, out, percent) {
    input.value = String(percent);
    this.slider(input, out);
  }

  mute(muted) {
    const ui = this.ui;
    ui.mute.setAttribute('aria-pressed', String(muted));
    ui.mute.textContent = muted ? 'Mic muted \u2013 tap to unmute' : 'Mute mic';
    ui.micMeter.classList.toggle('is-muted', muted);
  }

  /** The singer's own slot ("A"), or nothing. */
  slot(slot) {
    this.ui.slot.textContent = slot ? `Slot ${slot}` : '';
    this.ui.slot.hidden = !slot;
  }

  /** One frame of the mic meter: `m` is { power, peak } or null. */
  meter(m, muted, now) {
    const ui = this.ui;
    if (!m) {
      ui.micFill.style.width = '0%';
      ui.micDb.textContent = '\u2013';
      return;
    }
    const peakDb = m.peak > 0 ? 20 * Math.log10(m.peak) : -Infinity;
    const rmsDb = m.power > 0 ? 10 * Math.log10(m.power) : -Infinity;
    ui.micFill.style.width = `${dbToPercent(peakDb)}%`;
    ui.micFill.className = `meter-fill${peakDb > METER_HOT_DB ? ' is-high' : peakDb > METER_MID_DB ? ' is-mid' : ''}`;
    if (now - this.meterLastAria > 500) {
      this.meterLastAria = now;
      const shown = Number.isFinite(rmsDb) ? Math.max(METER_FLOOR_DB, Math.round(rmsDb)) : METER_FLOOR_DB;
      ui.micMeter.setAttribute('aria-valuenow', String(shown));
      if (muted) ui.micDb.textContent = 'muted';
      else ui.micDb.textContent = Number.isFinite(rmsDb) && rmsDb > METER_FLOOR_DB ? `${Math.round(rmsDb)} dB` : 'silent';
    }
  }

  /** The calibration row: the round trip the box keeps (ms, or null), and `status`:
   * 'measuring', null, or why the last measurement failed. */
  calibration(roundTripMs, status) {
    const ui = this.ui;
    ui.latCalibration.textContent = typeof roundTripMs === 'number' ? `${Math.round(roundTripMs)} ms` : 'not measured';
    ui.calibrate.disabled = status === 'measuring';
    ui.calibrate.textContent = status === 'measuring' ? 'Listening…' : typeof roundTripMs === 'number' ? 'Measure again' : "Measure my phone's delay";
    const why = {
      quiet: 'The mic did not hear the chirps: turn the volume up, unplug headphones, and try again.',
      unsteady: 'The chirps came back at different times (a noisy room?): try again somewhere quieter.',
      calibration_unsupported: 'This browser cannot measure it.',
      calibration_interrupted: 'The measurement was interrupted: try again.',
      no_mic: 'The microphone is not open.',
    };
    if (status && status !== 'measuring') ui.calibrateNote.textContent = why[status] || 'The measurement failed: try again.';
    else ui.calibrateNote.textContent = this.calibrateHint;
  }

  latency({ rttMs, boxDelayMs, oneWayMs, jitterBufferMs, lossPct, syncOffsetMs }) {
    const ui = this.ui;
    ui.latSync.textContent = describeOffset(syncOffsetMs) || '\u2013';
    ui.latRtt.textContent = fmtMs(rttMs);
    ui.latBox.textContent = fmtMs(boxDelayMs);
    ui.latOneWay.textContent = fmtMs(oneWayMs);
    ui.latPhone.textContent = fmtMs(jitterBufferMs);
    ui.latLoss.textContent = typeof lossPct === 'number' ? `${Math.round(lossPct * 10) / 10} %` : '\u2013';
  }

  /** The room list: the singers, this phone, and how many listen (`listeners`; null
   * from a box that lists everyone); returns my own row (or undefined). */
  room(peers, myPeer, listeners) {
    const ui = this.ui;
    const rows = roomRows(peers, myPeer);
    const shown = rows.slice(0, ROOM_ROWS_MAX);
    const listed = rows.filter((r) => !r.singer).length;
    const others = typeof listeners === 'number' ? Math.max(0, listeners - listed) : 0;
    const total = rows.length + others;
    const key = shown.map((r) => `${r.peer}\u0000${r.name}\u0000${r.slot}`).join('\u0001') + `|${rows.length}|${others}`;
    if (key !== this.roomKey) {
      this.roomKey = key;
      ui.roomList.textContent = '';
      for (const r of shown) {
        const li = this.doc.createElement('li');
        const name = this.doc.createElement('span');
        name.className = 'peer-name';
        if (r.slot) {
          const tag = this.doc.createElement('span');
          tag.className = 'peer-slot';
          tag.textContent = r.slot;
          name.appendChild(tag);
        }
        name.appendChild(this.doc.createTextNode(r.name));
        if (r.me) {
          const meTag = this.doc.createElement('span');
          meTag.className = 'peer-me';
          meTag.textContent = ' (you)';
          name.appendChild(meTag);
        }
        const detail = this.doc.createElement('span');
        detail.className = 'peer-detail';
        li.appendChild(name);
        li.appendChild(detail);
        if (r.singer) {
          const bar = this.doc.createElement('div');
          bar.className = 'peer-bar';
          bar.setAttribute('aria-hidden', 'true');
          bar.appendChild(this.doc.createElement('div'));
          li.appendChild(bar);
        }
        ui.roomList.appendChild(li);
      }
      if (rows.length > shown.length) {
        const li = this.doc.createElement('li');
        li.className = 'hint';
        li.textContent = `+${rows.length - shown.length} more`;
        ui.roomList.appendChild(li);
      }
      if (others > 0) {
        const li = this.doc.createElement('li');
        li.className = 'hint';
        li.textContent = others === 1 ? '1 listener' : `${others} listeners`;
        ui.roomList.appendChild(li);
      }
    }
    shown.forEach((r, i) => {
      const li = ui.roomList.children[i];
      if (!li) return;
      const detail = li.querySelector('.peer-detail');
      detail.textContent = r.detail;
      detail.classList.toggle('is-warn', Boolean(r.warn));
      const fill = li.querySelector('.peer-bar > div');
      if (fill) fill.style.width = `${dbToPercent(r.level_db)}%`;
    });
    ui.roomCount.textContent = total ? `(${total})` : '';
    ui.roomEmpty.hidden = total > 0;
    return (Array.isArray(peers) ? peers : []).find((p) => p && p.peer === myPeer);
  }
}
