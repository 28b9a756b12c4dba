// The venue screen: polls /screen/state and draws the stage. No framework, no network
// beyond the box. A failed poll keeps the last picture and says so after a while.

import { LyricsView, SongClock } from '/lyrics.js';

const POLL_MS = 150;
/** Levels below this (dBFS) show an empty meter. */
const FLOOR_DB = -60;

const stage = document.getElementById('stage');
const cards = new Map();
let lastOk = Date.now();

function card(slot) {
  let c = cards.get(slot);
  if (c) return c;
  const el = document.createElement('div');
  el.className = 'slot';
  el.innerHTML = '<div class="letter"></div><div class="name"></div>'
    + '<div><div class="meter"><div class="unlit"></div></div><div class="note"></div></div>';
  el.querySelector('.letter').textContent = slot;
  stage.appendChild(el);
  c = { el, name: el.querySelector('.name'), unlit: el.querySelector('.unlit'), note: el.querySelector('.note') };
  cards.set(slot, c);
  return c;
}

function width(db) {
  if (db === null || db === undefined || db <= FLOOR_DB) return 0;
  return Math.min(100, ((db - FLOOR_DB) / -FLOOR_DB) * 100);
}

function draw(state) {
  document.getElementById('box-name').textContent = state.name;
  document.title = `${state.name}: on stage`;
  document.getElementById('url').textContent = state.join ?? '';
  const listening = state.listeners === 1 ? '1 listening' : `${state.listeners} listening`;
  document.getElementById('audience').textContent = listening;
  for (const s of state.slots) {
    const c = card(s.slot);
    c.el.classList.toggle('closed', !s.open);
    c.el.dataset.presence = s.presence ?? 'empty';
    if (s.name) {
      c.name.textContent = s.name;
      c.name.classList.remove('empty');
    } else {
      c.name.textContent = s.open ? 'Free: scan to sing' : 'Closed';
      c.name.classList.add('empty');
    }
    c.unlit.style.width = `${100 - width(s.level_db)}%`;
    c.note.textContent = s.muted ? 'muted'
      : s.presence === 'reconnecting' ? 'reconnecting…'
        : s.presence === 'connecting' ? 'connecting…' : '';
  }
}

const lyrics = new LyricsView(document.getElementById('lyric-current'), document.getElementById('lyric-next'));
/** Where the speakers are in the song, from the readings so far. */
const clock = new SongClock();

/** The speakers' position in the song now, ms, or null when no song plays. */
function songMs() {
  return clock.at(performance.now());
}

/** A reading of the box's position (`song` from /screen/state, or null). */
function reading(song, sentAt, arrivedAt) {
  clock.reading(song && {
    positionMs: song.position_ms,
    playing: song.state === 'playing',
    generation: song.generation,
  }, sentAt, arrivedAt);
}

function drawSong(song) {
  const box = document.getElementById('song');
  box.hidden = !song;
  document.body.classList.toggle('singing', !!song);
  if (!song) {
    lyrics.load(null);
    return;
  }
  const who = song.singers.join(' & ');
  document.getElementById('song-title').textContent = `${song.title}${song.artist ? ` · ${song.artist}` : ''}${who ? ` — ${who}` : ''}`;
  lyrics.load(song.id);
  lyrics.countIn = { ms: song.count_in_ms, beats: song.beats };
}

function frame() {
  lyrics.show(songMs());
  requestAnimationFrame(frame);
}
requestAnimationFrame(frame);

async function poll() {
  try {
    const sentAt = performance.now();
    const r = await fetch('/screen/state', { cache: 'no-store' });
    if (r.ok) {
      const state = await r.json();
      const arrivedAt = performance.now();
      draw(state);
      drawSong(state.song || null);
      reading(state.song || null, sentAt, arrivedAt);
      lastOk = Date.now();
    }
  } catch (_) {
    // The box restarting or the Wi-Fi dropping: keep the last picture.
  }
  if (Date.now() - lastOk > 5000) document.getElementById('audience').textContent = 'box not answering…';
  setTimeout(poll, POLL_MS);
}

poll();
// For tests and the curious: what the screen drew last.
window.duetboxScreen = { cards, lyrics, songMs: () => songMs() };
