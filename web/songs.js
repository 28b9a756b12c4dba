// duetbox phone page: the song panel. Search the box's library, add a song (alone or
// with a partner from the room), see the queue and take one's own songs back off it,
// and see what is playing. Talks through `send` (the session's WebSocket); fed the
// box's `songs`, `queued`, `queue` and `room` messages (docs/protocol.md, "Songs").

const SEARCH_DELAY_MS = 250;

function el(tag, props, children) {
  const e = document.createElement(tag);
  Object.assign(e, props || {});
  for (const c of children || []) e.append(c);
  return e;
}

function names(singers) {
  return singers.map((s) => s.name).join(' & ');
}

function fmt(ms) {
  if (typeof ms !== 'number') return '';
  const s = Math.round(ms / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

export class SongsPanel {
  constructor(doc, send) {
    this.send = send;
    this.me = null;
    this.queue = null;
    this.results = [];
    this.timer = 0;
    const $ = (id) => doc.getElementById(id);
    this.ui = {
      search: $('song-search'),
      partner: $('partner'),
      results: $('song-results'),
      note: $('song-note'),
      queue: $('queue-list'),
      queueCount: $('queue-count'),
      nowTitle: $('now-title'),
      nowState: $('now-state'),
    };
    this.ui.search.addEventListener('input', () => {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => this.search(), SEARCH_DELAY_MS);
    });
  }

  /** Joined as `peer`: list the first page of songs. */
  joined(peer) {
    this.me = peer;
    this.search();
  }

  search() {
    this.send({ type: 'songs', query: this.ui.search.value.trim(), offset: 0 });
  }

  /** The `songs` message. */
  onSongs(msg) {
    if (!Array.isArray(msg.songs)) return;
    this.results = msg.songs;
    const list = this.ui.results;
    list.replaceChildren();
    for (const s of msg.songs) {
      const add = el('button', { className: 'btn-small', type: 'button', textContent: 'Add' });
      add.dataset.song = s.id;
      add.addEventListener('click', () => this.add(s));
      const li = el('li', {}, [
        el('div', { className: 'what' }, [
          el('b', { textContent: s.title }),
          el('span', { textContent: [s.artist, fmt(s.duration_ms), s.lyrics ? 'lyrics' : ''].filter(Boolean).join(' · ') }),
        ]),
        add,
      ]);
      li.dataset.song = s.id;
      list.append(li);
    }
    const more = msg.total > msg.songs.length ? ` (${msg.total} match; type more to narrow)` : '';
    this.ui.note.textContent = msg.total === 0 ? 'No song matches.' : more;
  }

  add(song) {
    const partner = this.ui.partner.value || null;
    this.send({ type: 'queue_add', song: song.id, partner });
    this.ui.note.textContent = `Adding ${song.title}…`;
  }

  /** The `queued` message (our add went in). */
  onQueued() {
    this.ui.note.textContent = 'Added to the queue.';
  }

  /** A refusal of ours (`error` with code `refused` or `bad_field`). */
  onRefused(message) {
    this.ui.note.textContent = message;
  }

  /** The `room` message: the singers one may sing a duet with. */
  onRoom(peers) {
    const select = this.ui.partner;
    const chosen = select.value;
    const others = peers.filter((p) => p.role === 'singer' && p.peer !== this.me);
    const shape = others.map((p) => `${p.peer}:${p.name}`).join('|');
    if (select.dataset.shape === shape) return;
    select.dataset.shape = shape;
    select.replaceChildren(el('option', { value: '', textContent: 'Just me' }));
    for (const p of others) select.append(el('option', { value: p.peer, textContent: p.name }));
    select.value = others.some((p) => p.peer === chosen) ? chosen : '';
  }

  /** The `queue` message. */
  onQueue(msg) {
    this.queue = msg;
    const list = this.ui.queue;
    list.replaceChildren();
    for (const e of msg.entries || []) {
      const mine = e.singers.some((s) => s.peer === this.me);
      const li = el('li', { className: mine ? 'mine' : '' }, [
        el('div', { className: 'what' }, [
          el('b', { textContent: e.title }),
          el('span', { textContent: names(e.singers) + (mine && e.mode === 'in_ear' ? ' · in-ear: bring headphones' : '') }),
        ]),
      ]);
      li.dataset.entry = e.entry;
      if (mine) {
        const off = el('button', { className: 'btn-small', type: 'button', textContent: 'Take off' });
        off.addEventListener('click', () => this.send({ type: 'queue_withdraw', entry: e.entry }));
        li.append(off);
      }
      list.append(li);
    }
    const n = (msg.entries || []).length;
    this.ui.queueCount.textContent = n ? `(${n})` : '';
    const song = msg.song;
    this.ui.nowTitle.textContent = song
      ? `${song.title}${song.artist ? ` · ${song.artist}` : ''} — ${names(song.singers)}`
      : 'No song playing.';
    this.ui.nowState.textContent = song ? song.state : '';
    // In-ear: the singers follow their phones, so they wear headphones (the speakers
    // wait for their voices and would sound late to them).
    const singing = song && song.singers.some((s) => s.peer === this.me);
    this.ui.nowTitle.dataset.mode = song ? song.mode : '';
    if (singing && song.mode === 'in_ear') this.ui.nowTitle.textContent += ' · in-ear: sing to your headphones, not the speakers';
  }
}
