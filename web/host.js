// duetbox host page: logs in with the host PIN over the WebSocket, then shows and drives
// the queue, the transport, the stage slots and the levels (docs/protocol.md, "Host").
// No build step, no request anywhere but the box. `window.duetboxHost` is a read-only
// hook for tests: the last messages and the state of the connection.

const $ = (id) => document.getElementById(id);
const SEND_GAP_MS = 100;

const host = {
  ws: null,
  state: 'login',
  error: null,
  room: null,
  queue: null,
  // Where the song was at the last `queue` message, and when it came (local clock).
  anchor: null,
  sendTimers: {},
};
window.duetboxHost = {
  get state() { return host.state; },
  get error() { return host.error; },
  get room() { return host.room; },
  get queue() { return host.queue; },
};

function send(msg) {
  if (host.ws && host.ws.readyState === WebSocket.OPEN) host.ws.send(JSON.stringify(msg));
}

/** Sends `msg` at most every SEND_GAP_MS per `key` (sliders), the last one always. */
function sendSoon(key, msg) {
  clearTimeout(host.sendTimers[key]);
  host.sendTimers[key] = setTimeout(() => send(msg), SEND_GAP_MS);
}

function fmt(ms) {
  if (ms == null) return '–';
  const s = Math.max(0, Math.round(ms / 1000));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

function names(singers) {
  return singers.map((s) => s.name).join(' & ') || 'nobody';
}

function el(tag, props, children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children || []) e.append(c);
  return e;
}

function showError(text) {
  host.error = text;
  $('desk-error').textContent = text || '';
}

function connect(pin) {
  const ws = new WebSocket(`wss://${location.host}/ws`);
  host.ws = ws;
  host.state = 'connecting';
  ws.onopen = () => send({ type: 'host', v: 1, pin });
  ws.onmessage = (ev) => {
    let msg;
    try { msg = JSON.parse(ev.data); } catch (_) { return; }
    handle(msg);
  };
  ws.onclose = () => {
    if (host.state === 'desk') {
      host.state = 'closed';
      showError('Connection to the box lost. Reload the page.');
    } else if (host.state !== 'refused') {
      host.state = 'login';
    }
    $('login-button').disabled = false;
  };
}

function handle(msg) {
  switch (msg.type) {
    case 'host_welcome':
      host.state = 'desk';
      $('login').hidden = true;
      $('desk').hidden = false;
      break;
    case 'host_room':
      host.room = msg;
      drawRoom();
      break;
    case 'queue':
      host.queue = msg;
      host.anchor = msg.song ? { ms: msg.song.position_ms, at: performance.now(), song: msg.song } : null;
      drawQueue();
      break;
    case 'error':
      if (host.state !== 'desk') {
        host.state = 'refused';
        host.error = msg.message;
        $('login-error').textContent = msg.message;
      } else {
        showError(msg.message);
      }
      break;
    case 'bye':
      host.state = 'closed';
      showError(`The box ended the session (${msg.reason}).`);
      break;
    default:
      break;
  }
}

/** The button that switches an entry between stage and in-ear (docs/sync.md). */
function modeButton(e) {
  const inEar = e.mode === 'in_ear';
  const b = el('button', {
    className: 'btn mode',
    textContent: inEar ? 'In-ear' : 'Stage',
    title: inEar
      ? 'Singers follow their phones in headphones; the speakers wait for their voices. Tap for stage.'
      : 'Singers follow the speakers. Tap for in-ear (headphones).',
  });
  b.dataset.mode = e.mode;
  b.onclick = () => send({ type: 'mode', entry: e.entry, mode: inEar ? 'stage' : 'in_ear' });
  return b;
}

/** How long the speakers hold the backing back for in-ear voices. */
function drawDelay() {
  const d = host.room && host.room.venue_delay_ms;
  $('now-delay').textContent = typeof d === 'number' && d > 0 ? `speakers held back ${Math.round(d)} ms for the voices` : '';
}

function drawQueue() {
  const q = host.queue;
  const list = $('queue');
  list.replaceChildren();
  $('queue-empty').hidden = q.entries.length > 0;
  $('queue-count').textContent = q.entries.length ? `(${q.entries.length})` : '';
  q.entries.forEach((e, i) => {
    const what = el('div', { className: 'what' }, [
      el('b', { textContent: `${e.title}${e.artist ? ' · ' + e.artist : ''}` }),
      el('span', { className: 'small', textContent: names(e.singers) }),
    ]);
    const start = el('button', { className: 'btn primary', textContent: 'Start', title: 'Start this song now' });
    start.dataset.entry = e.entry;
    start.onclick = () => send({ type: 'transport', do: 'start', entry: e.entry });
    const up = el('button', { className: 'btn', textContent: '↑', disabled: i === 0, title: 'Earlier' });
    up.onclick = () => send({ type: 'queue_move', entry: e.entry, to: i - 1 });
    const down = el('button', { className: 'btn', textContent: '↓', disabled: i === q.entries.length - 1, title: 'Later' });
    down.onclick = () => send({ type: 'queue_move', entry: e.entry, to: i + 1 });
    const remove = el('button', { className: 'btn danger', textContent: '✕', title: 'Remove' });
    remove.onclick = () => send({ type: 'queue_remove', entry: e.entry });
    const li = el('li', {}, [what, start, modeButton(e), up, down, remove]);
    li.dataset.entry = e.entry;
    list.append(li);
  });
  const problems = $('problems');
  problems.replaceChildren();
  $('problems-card').hidden = q.problems.length === 0;
  for (const p of q.problems.slice().reverse()) {
    problems.append(el('li', { className: 'problem' }, [
      el('div', { className: 'what' }, [
        el('b', { textContent: `${p.title}: ${p.kind}` }),
        el('span', { className: 'small', textContent: p.detail }),
      ]),
    ]));
  }
  const song = q.song;
  $('now').hidden = !song;
  $('now-empty').hidden = !!song;
  if (song) {
    $('now-title').textContent = `${song.title}${song.artist ? ' · ' + song.artist : ''}`;
    $('now-singers').textContent = names(song.singers);
    $('now-state').textContent = song.state;
    const mode = modeButton(song);
    $('now-mode').textContent = mode.textContent;
    $('now-mode').dataset.mode = song.mode;
    $('now-mode').onclick = mode.onclick;
    drawDelay();
  }
  $('pause').disabled = !song || song.state === 'paused';
  $('stop').disabled = !song;
  $('next').disabled = q.entries.length === 0 && !song;
  $('play').disabled = (!song && q.entries.length === 0) || (song && song.state !== 'paused');
  tick();
}

/** Moves the position display along between messages while the song plays. */
function tick() {
  const a = host.anchor;
  if (!a) return;
  const playing = a.song.state === 'playing';
  const ms = a.ms + (playing ? performance.now() - a.at : 0);
  const dur = a.song.duration_ms;
  $('now-time').textContent = ` ${fmt(ms)} / ${fmt(dur)}`;
  if (dur && !$('progress').matches(':active')) $('progress').value = String(Math.min(1000, (ms / dur) * 1000));
}
setInterval(tick, 250);

function levelWidth(db) {
  return `${Math.max(0, Math.min(100, ((db + 60) / 60) * 100))}%`;
}

/** A phone's offset from the speakers, for the desk. */
function syncText(ms) {
  const a = Math.round(Math.abs(ms));
  if (a <= 10) return 'in time';
  return ms > 0 ? `${a} ms late` : `${a} ms early`;
}

function drawRoom() {
  const r = host.room;
  const slots = $('slots');
  const byPeer = new Map(r.peers.map((p) => [p.peer, p]));
  const listeners = r.peers.filter((p) => p.role === 'listener').length;
  // Sync (docs/sync.md): how far ahead of the speakers the phones' backing plays, and
  // the listener furthest from the speakers.
  const far = r.peers.filter((p) => typeof p.sync_ms === 'number').reduce((m, p) => Math.max(m, Math.abs(p.sync_ms)), 0);
  const lead = typeof r.lead_ms === 'number' && r.lead_ms > 0 ? ` · phones led ${Math.round(r.lead_ms)} ms, furthest ${Math.round(far)} ms off` : '';
  $('listeners').textContent = `${listeners} listener${listeners === 1 ? '' : 's'}${lead}`;
  drawDelay();
  // Rebuild only when the slots' holders changed, so sliders are not yanked mid-drag.
  const shape = r.slots.map((s) => s.peer || '-').join(',');
  if (slots.dataset.shape !== shape) {
    slots.dataset.shape = shape;
    slots.replaceChildren();
    for (const s of r.slots) {
      const p = s.peer ? byPeer.get(s.peer) : null;
      const row = el('div', { className: 'slot' });
      row.dataset.slot = s.slot;
      const gain = el('input', { type: 'range', min: -60, max: 12, step: 0.5, value: s.gain_db });
      gain.setAttribute('aria-label', `Slot ${s.slot} volume`);
      gain.oninput = () => sendSoon(`g${s.slot}`, { type: 'slot', slot: s.slot, gain_db: Number(gain.value) });
      const pan = el('input', { type: 'range', min: -1, max: 1, step: 0.05, value: s.pan });
      pan.setAttribute('aria-label', `Slot ${s.slot} pan`);
      pan.oninput = () => sendSoon(`p${s.slot}`, { type: 'slot', slot: s.slot, pan: Number(pan.value) });
      const mute = el('input', { type: 'checkbox', checked: s.muted });
      mute.onchange = () => send({ type: 'slot', slot: s.slot, muted: mute.checked });
      const kick = el('button', { className: 'btn danger', textContent: 'Remove singer', disabled: !p });
      kick.onclick = () => p && send({ type: 'kick', peer: p.peer });
      row.append(
        el('div', { className: 'letter', textContent: s.slot }),
        el('div', { className: 'row' }, [el('b', { className: 'who', textContent: p ? p.name : 'empty' }), el('span', { className: 'small fig' })]),
        el('div', { className: 'meter' }, [el('i')]),
        el('div', { className: 'row' }, [
          el('label', { className: 'inline' }, ['Vol', gain]),
          el('label', { className: 'inline' }, ['Pan', pan]),
          el('label', {}, [mute, ' Mute']),
          kick,
        ]),
      );
      slots.append(row);
    }
  }
  for (const s of r.slots) {
    const row = slots.querySelector(`[data-slot="${s.slot}"]`);
    const p = s.peer ? byPeer.get(s.peer) : null;
    if (!row) continue;
    const sync = p && typeof p.sync_ms === 'number' ? ` · ${syncText(p.sync_ms)}` : '';
    const trip = p && typeof p.round_trip_ms === 'number' ? ` · phone round trip ${Math.round(p.round_trip_ms)} ms` : '';
    const oneWay = p && typeof p.one_way_ms === 'number' ? ` · network ${Math.round(p.one_way_ms)} ms one way` : '';
    row.querySelector('.fig').textContent = p ? `${p.state} · ${p.delay_ms} ms · ${p.loss_pct}% loss${sync}${trip}${oneWay}` : '';
    row.querySelector('.meter i').style.width = p ? levelWidth(p.level_db) : '0';
  }
  for (const [id, value] of [['master', r.master_gain_db], ['backing', r.backing_gain_db]]) {
    const input = $(id);
    if (!input.matches(':active')) input.value = String(value);
    $(`${id}-v`).textContent = `${value.toFixed(1)} dB`;
  }
  $('backing-mute').checked = r.backing_muted;
  // The source picker shows only when there is a choice: a line-in (audio.line_in) or a
  // WHIP client connected in the backing role.
  const feed = r.peers.find((p) => p.role === 'backing');
  $('source-row').hidden = !r.line_in_configured && !feed && r.backing_source === 'songs';
  $('source-line-in-label').hidden = !r.line_in_configured;
  $('source-whip-label').hidden = !feed;
  $('source-whip-name').textContent = feed ? `WHIP: ${feed.name}` : 'WHIP feed';
  $('source-songs').checked = r.backing_source === 'songs';
  $('source-line-in').checked = r.backing_source === 'line_in';
  $('source-whip').checked = r.backing_source === 'whip';
  drawRecordings(r.recording);
  const live = r.live_source;
  const what = live && live.source === 'whip' ? 'WHIP feed' : 'line-in';
  $('line-in-state').textContent = !live ? ''
    : live.live ? `${what} live`
    : live.problem ? `${what} failed: ${live.problem} (trying again)` : `opening the ${what}…`;
  $('line-in-state').classList.toggle('problem', Boolean(live && live.problem));
}

/** The recordings: the song being recorded, why the last one stopped, and every one
 * listed, newest first, with its page (files and QR code). */
function drawRecordings(rec) {
  if (!rec) return;
  $('recording-now').textContent = rec.now ? `Recording “${rec.now}”…` : '';
  $('recording-problem').hidden = !rec.problem;
  $('recording-problem').textContent = rec.problem ? `Recording stopped: ${rec.problem}` : '';
  const list = $('recordings');
  const key = JSON.stringify(rec.recordings);
  if (list.dataset.key === key) return;
  list.dataset.key = key;
  list.replaceChildren();
  $('recordings-empty').hidden = rec.recordings.length > 0;
  for (const t of rec.recordings.slice().reverse()) {
    if (!/^\/recordings\/[0-9a-f]{32}$/.test(t.url)) continue;
    const link = el('a', { href: t.url, target: '_blank', rel: 'noopener', textContent: t.title });
    list.append(el('li', {}, [
      el('div', { className: 'what' }, [
        link,
        el('span', { className: 'small', textContent: `${t.singers.join(' & ')} · ${Math.round(t.seconds)} s` }),
      ]),
      el('img', { src: `${t.url}/qr.svg`, alt: `QR code: ${t.title}`, width: 96, height: 96 }),
    ]));
  }
}

$('login-form').onsubmit = (ev) => {
  ev.preventDefault();
  $('login-error').textContent = '';
  $('login-button').disabled = true;
  connect($('pin').value);
};
$('play').onclick = () => send({ type: 'transport', do: 'play' });
$('pause').onclick = () => send({ type: 'transport', do: 'pause' });
$('stop').onclick = () => send({ type: 'transport', do: 'stop' });
$('next').onclick = () => send({ type: 'transport', do: 'next' });
$('progress').onchange = () => {
  const song = host.queue && host.queue.song;
  if (song && song.duration_ms) send({ type: 'transport', do: 'seek', ms: Math.round((Number($('progress').value) / 1000) * song.duration_ms) });
};
$('master').oninput = () => sendSoon('master', { type: 'master', gain_db: Number($('master').value) });
$('backing').oninput = () => sendSoon('backing', { type: 'backing', gain_db: Number($('backing').value) });
$('backing-mute').onchange = () => send({ type: 'backing', muted: $('backing-mute').checked });
for (const radio of document.querySelectorAll('input[name="source"]')) {
  radio.onchange = () => { if (radio.checked) send({ type: 'backing', source: radio.value }); };
}
// Phones ping every 5 s so the box's idle timeout never closes them; so does the desk.
setInterval(() => send({ type: 'ping', t: performance.now() }), 5000);
