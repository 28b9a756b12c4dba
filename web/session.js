// The phone's session with the box: one WebSocket and one RTCPeerConnection at a time
// (a *link*), and the will to stay on stage across links. When a link breaks (Wi-Fi
// blip, screen lock, the box restarting) the session makes a new one and joins with
// the token of its last welcome, so the box gives back the same slot, name and
// settings; it retries fast while the box keeps the place (protocol.REJOIN_GRACE_MS),
// then backs off. It never comes back by itself after Leave, a refusal retrying cannot
// fix, or `bye kicked`.
//
// Knows the protocol (protocol.js) and the browser's WebSocket and WebRTC; knows
// nothing of the DOM or of Web Audio: it reports through the hooks it is given.
//
// Invariants: at most one link exists at a time; events of an ended link are ignored;
// the token lives in sessionStorage (this tab only) and is forgotten after Leave,
// kicked, or a refusal.

import {
  byeAction,
  errorAction,
  joinMessage,
  linkState,
  mungeOpus,
  parseMessage,
  readWelcome,
  retryDelay,
} from './protocol.js';

/** Heartbeat period in ms: the protocol asks for one `ping` every 5 s. */
const PING_INTERVAL_MS = 5000;
/** A WebSocket with no message for this long (ms) is treated as dead. The box answers
 * every ping, so this is three missed pongs; Wi-Fi drop-outs often leave TCP unaware. */
const SILENCE_LIMIT_MS = 15000;
/** From creating the WebSocket to its open, at most this long (ms): on a LAN it takes
 * milliseconds, and a network that is down makes it hang, not fail. */
const OPEN_DEADLINE_MS = 3000;
/** From a connection attempt to a connected PeerConnection, at most this long (ms)
 * before starting over. LAN ICE takes well under a second. */
const LIVE_DEADLINE_MS = 15000;
/** How long (ms) ICE may stay "disconnected" before the link is rebuilt. The box gives
 * up on our media after about 5 s without ICE consent (and keeps our place). */
const DISCONNECTED_GRACE_MS = 3000;
/** sessionStorage key of the token. */
const KEY_TOKEN = 'duetbox.token';

function candidateJson(c) {
  if (typeof c.toJSON === 'function') return c.toJSON();
  return { candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex };
}

function loadToken(storage) {
  try {
    return storage ? storage.getItem(KEY_TOKEN) : null;
  } catch (_) {
    return null; // Storage can be disabled (private mode, strict settings).
  }
}

function saveToken(storage, token) {
  try {
    if (!storage) return;
    if (token) storage.setItem(KEY_TOKEN, token);
    else storage.removeItem(KEY_TOKEN);
  } catch (_) {
    // Not remembering only costs the place after a reload.
  }
}

/**
 * hooks: {
 *   state(state, code, note)  'connecting' | 'live' | 'reconnecting' (code: why)
 *   welcome(w)                 readWelcome() of every welcome
 *   room(peers, listeners)     every `room` message: singers and this phone, and
 *                              the number of listeners (null from an older box)
 *   remote(stream | null)      the return mix to play (null: none any more)
 *   rtt(ms)                    a ping's round trip
 *   pong(sent, received, now)  a pong: when its ping left and it came back
 *                              (performance.now()), the box's clock `now` (ms)
 *   sync(msg)                  the box's answer to a `playout` report
 *   envelope(msg)              the levels of the return mix as the box encoded it
 *   live()                     media flows (after every (re)connect)
 *   stopped(code, detail)      the session ended for good (code null after Leave)
 *   mic()                      async: the microphone { stream, track } or null (a
 *                              singer's; called before every link; null stops)
 *   songs(msg)                 the `songs`, `queued` and `queue` messages, and the
 *                              box's refusals of song requests (`refused`)
 * }
 */
export class Session {
  constructor({ url, storage, hooks }) {
    this.url = url;
    this.storage = storage;
    this.hooks = hooks;
    this.wanted = false;
    this.join = null;
    this.link = null;
    this.seq = 0;
    this.everLive = false;
    this.failures = 0;
    this.lostAt = 0;
    this.error = null;
    this.retryTimer = 0;
    this.retryAt = 0;
    this.token = loadToken(storage);
    this.peer = null;
  }

  /** Goes on stage as `name`/`role` (with `pin`), rejoining our place if the box still
   * keeps it for this tab's token. */
  start({ name, role, pin }) {
    this.join = { name, role, pin };
    this.wanted = true;
    this.everLive = false;
    this.failures = 0;
    this.error = null;
    this.peer = null;
    this.connect();
  }

  /** The current link's peer connection (for getStats), or null. */
  peerConnection() {
    return this.link && !this.link.done ? this.link.pc : null;
  }

  /** The current link's offer as sent, or null. */
  localSdp() {
    const pc = this.peerConnection();
    return pc && pc.localDescription ? pc.localDescription.sdp : null;
  }

  /** Sends a message on the current link, if it is open. */
  send(msg) {
    const l = this.link;
    if (l && !l.done && l.ws && l.ws.readyState === WebSocket.OPEN) l.ws.send(JSON.stringify(msg));
  }

  /** Leaves the stage now: the box frees the place at once. */
  leave() {
    this.send({ type: 'leave' });
    this.end(null);
  }

  /** Ends the session for good because of `code` (a refusal or a local problem). */
  stop(code, detail) {
    this.end(code, detail);
  }

  end(code, detail) {
    const was = this.wanted;
    this.wanted = false;
    clearTimeout(this.retryTimer);
    this.retryTimer = 0;
    this.retryAt = 0;
    if (this.link) this.endLink(this.link);
    this.forget();
    if (was) this.hooks.stopped(code, detail);
  }

  forget() {
    this.token = null;
    saveToken(this.storage, null);
  }

  isStale(l) {
    return l.done || this.link !== l;
  }

  async connect() {
    this.retryTimer = 0;
    this.retryAt = 0;
    if (!this.wanted) return;
    if (this.join.role === 'singer') {
      const mic = await this.hooks.mic();
      if (!mic || !this.wanted) return;
    }
    const l = {
      seq: ++this.seq,
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
      openTimer: 0,
      discTimer: 0,
    };
    this.link = l;
    this.hooks.state(this.everLive ? 'reconnecting' : 'connecting', this.everLive ? this.error : null, 'Contacting the box\u2026');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      console.warn('WebSocket failed:', err);
      this.lost(l, 'unreachable');
      return;
    }
    l.ws = ws;
    l.openTimer = setTimeout(() => this.lost(l, 'unreachable'), OPEN_DEADLINE_MS);
    l.liveTimer = setTimeout(() => this.lost(l, l.opened ? 'link_failed' : 'unreachable'), LIVE_DEADLINE_MS);
    ws.onopen = () => {
      if (this.isStale(l)) return;
      l.opened = true;
      clearTimeout(l.openTimer);
      l.lastRx = Date.now();
      this.send(joinMessage({ ...this.join, token: this.token }));
      l.timers.push(setInterval(() => {
        if (Date.now() - l.lastRx > SILENCE_LIMIT_MS) this.lost(l, 'connection_lost');
      }, 1000));
    };
    ws.onmessage = (ev) => {
      if (this.isStale(l)) return;
      l.lastRx = Date.now();
      const msg = parseMessage(ev.data);
      if (!msg) {
        console.warn('box sent a frame that is not a message');
        return;
      }
      // One message at a time: an answer must not overtake the offer it answers.
      l.queue = l.queue
        .then(() => (this.isStale(l) ? undefined : this.handle(l, msg)))
        .catch((err) => {
          console.error(`handling "${msg.type}" failed:`, err);
          this.lost(l, 'client');
        });
    };
    ws.onerror = () => {
      // The close event follows and carries the decision.
    };
    ws.onclose = (ev) => {
      if (this.isStale(l)) return;
      if (ev.code === 1009) {
        this.stop('too_large');
        return;
      }
      this.lost(l, l.opened ? 'connection_lost' : 'unreachable');
    };
  }

  async handle(l, msg) {
    switch (msg.type) {
      case 'welcome': {
        const w = readWelcome(msg);
        this.peer = w.peer;
        if (w.token) {
          this.token = w.token;
          saveToken(this.storage, w.token);
        }
        this.send({ type: 'ping', t: performance.now() });
        l.timers.push(setInterval(() => this.send({ type: 'ping', t: performance.now() }), PING_INTERVAL_MS));
        this.hooks.welcome(w);
        this.hooks.state(this.everLive ? 'reconnecting' : 'connecting', this.everLive ? this.error : null, 'Setting up audio\u2026');
        await this.negotiate(l);
        break;
      }
      case 'answer':
        if (!l.pc || typeof msg.sdp !== 'string') break;
        await l.pc.setRemoteDescription({ type: 'answer', sdp: msg.sdp });
        l.answered = true;
        for (const c of l.remoteCands.splice(0)) await this.addRemoteCandidate(l, c);
        break;
      case 'candidate':
        if (!l.pc || !l.answered) l.remoteCands.push(msg.candidate);
        else await this.addRemoteCandidate(l, msg.candidate);
        break;
      case 'room':
        this.hooks.room(msg.peers, typeof msg.listeners === 'number' ? msg.listeners : null);
        break;
      case 'pong':
        if (typeof msg.t === 'number') {
          const received = performance.now();
          this.hooks.rtt(Math.max(0, received - msg.t));
          if (typeof msg.now === 'number' && this.hooks.pong) this.hooks.pong(msg.t, received, msg.now);
        }
        break;
      case 'sync':
        if (typeof msg.offset_ms === 'number' && this.hooks.sync) this.hooks.sync(msg);
        break;
      case 'envelope':
        if (typeof msg.levels === 'string' && this.hooks.envelope) this.hooks.envelope(msg);
        break;
      case 'songs':
      case 'queued':
      case 'queue':
      case 'song_clock':
      case 'recordings':
        if (this.hooks.songs) this.hooks.songs(msg);
        break;
      case 'error': {
        const code = typeof msg.code === 'string' ? msg.code : 'internal';
        if ((code === 'refused' || code === 'bad_field') && l.answered && this.hooks.songs) {
          // A refused song request (queue full, not yours, …): the song panel says so.
          this.hooks.songs(msg);
          break;
        }
        const action = errorAction(code, l.answered);
        if (action === 'stop') this.stop(code, msg.message);
        else if (action === 'retry') this.lost(l, code);
        else console.warn(`box error ${code}: ${msg.message || ''}`);
        break;
      }
      case 'bye': {
        const action = byeAction(msg.reason);
        if (action === 'stop') this.stop(msg.reason);
        else if (action === 'rejoin') this.lost(l, msg.reason === 'shutdown' || msg.reason === 'timeout' ? msg.reason : 'connection_lost');
        break;
      }
      default:
        break; // Newer boxes may send more; ignore what we do not know.
    }
  }

  async addRemoteCandidate(l, c) {
    try {
      // null marks the end of the box's candidates.
      await l.pc.addIceCandidate(c || null);
    } catch (err) {
      // One bad candidate must not end the session; ICE uses the others.
      if (c) console.warn('box candidate refused:', err && err.message);
    }
  }

  async negotiate(l) {
    if (l.pc) return;
    const pc = new RTCPeerConnection({ iceServers: [] });
    l.pc = pc;
    pc.onicecandidate = (ev) => {
      if (this.isStale(l)) return;
      // Some browsers send an empty candidate before the final null; it carries nothing.
      if (ev.candidate && !ev.candidate.candidate) return;
      const c = ev.candidate ? candidateJson(ev.candidate) : null;
      if (l.offerSent) this.send({ type: 'candidate', candidate: c });
      else l.localCands.push(c);
    };
    pc.ontrack = (ev) => {
      if (this.isStale(l)) return;
      this.hooks.remote(ev.streams && ev.streams[0] ? ev.streams[0] : new MediaStream([ev.track]));
    };
    pc.onconnectionstatechange = () => this.onLinkState(l);
    pc.oniceconnectionstatechange = () => this.onLinkState(l);

    if (this.join.role === 'singer') {
      const mic = await this.hooks.mic();
      if (!mic || this.isStale(l)) return;
      pc.addTransceiver(mic.track, { direction: 'sendrecv', streams: [mic.stream] });
    } else {
      pc.addTransceiver('audio', { direction: 'recvonly' });
    }
    const offer = await pc.createOffer();
    if (this.isStale(l)) return;
    let sdp = mungeOpus(offer.sdp);
    try {
      await pc.setLocalDescription({ type: 'offer', sdp });
    } catch (err) {
      // A browser that forbids this edit still gets a working, if plainer, call.
      console.warn('munged offer refused, sending the original:', err && err.message);
      sdp = offer.sdp;
      await pc.setLocalDescription(offer);
    }
    if (this.isStale(l)) return;
    // The text we set, not pc.localDescription: that one may already list candidates,
    // which then would reach the box twice.
    this.send({ type: 'offer', sdp });
    l.offerSent = true;
    for (const c of l.localCands.splice(0)) this.send({ type: 'candidate', candidate: c });
  }

  onLinkState(l) {
    if (this.isStale(l) || !l.pc) return;
    switch (linkState(l.pc.connectionState, l.pc.iceConnectionState)) {
      case 'connected':
        clearTimeout(l.discTimer);
        l.discTimer = 0;
        if (!l.live) this.goLive(l);
        else this.hooks.state('live', null);
        break;
      case 'failed':
        this.lost(l, 'link_failed');
        break;
      case 'disconnected':
        if (l.live && !l.discTimer) {
          this.hooks.state('reconnecting', 'link_weak');
          l.discTimer = setTimeout(() => this.lost(l, 'link_failed'), DISCONNECTED_GRACE_MS);
        }
        break;
      default:
        break;
    }
  }

  goLive(l) {
    l.live = true;
    clearTimeout(l.liveTimer);
    this.everLive = true;
    this.failures = 0;
    this.lostAt = 0;
    this.error = null;
    this.hooks.state('live', null);
    this.hooks.live();
  }

  /** Ends a link: no handler of it runs afterwards. */
  endLink(l) {
    if (l.done) return;
    l.done = true;
    l.timers.forEach((t) => clearInterval(t));
    clearTimeout(l.liveTimer);
    clearTimeout(l.openTimer);
    clearTimeout(l.discTimer);
    if (l.ws) {
      l.ws.onopen = null;
      l.ws.onmessage = null;
      l.ws.onclose = null;
      l.ws.onerror = null;
      try {
        l.ws.close(1000);
      } catch (_) {
        // Already closing.
      }
    }
    if (l.pc) {
      l.pc.onicecandidate = null;
      l.pc.ontrack = null;
      l.pc.onconnectionstatechange = null;
      l.pc.oniceconnectionstatechange = null;
      try {
        l.pc.close();
      } catch (_) {
        // Already closed.
      }
    }
    if (this.link === l) this.link = null;
    this.hooks.remote(null);
  }

  /** The link broke: say why and, unless the user left, try again soon. */
  lost(l, code) {
    if (this.isStale(l)) return;
    console.warn(`link ended: ${code}`);
    this.endLink(l);
    // After a shutdown the box is unreachable until it is back; keep saying why.
    this.error = code === 'unreachable' && this.error === 'shutdown' ? 'shutdown' : code;
    if (!this.wanted) return;
    const now = Date.now();
    if (!this.lostAt) this.lostAt = now;
    const delay = retryDelay(this.failures, now - this.lostAt);
    this.failures += 1;
    this.retryAt = now + delay;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
    this.hooks.state('reconnecting', this.error);
  }
}
