// The level of what the phone plays, every 2.5 ms, timed by the audio context's own
// clock (an AudioWorklet module; docs/sync.md). The page sets these levels against the
// box's levels of the same mix to find when it really plays each RTP timestamp: no
// browser reports the time from WebRTC's playout to the audio output.
//
// Posts { times: [context time of each block's first frame, s], db: [level, dB] } about
// every 125 ms. No output of its own.

const BLOCK_S = 0.0025;
const POST_EVERY = 50;

class LevelTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.max(1, Math.round(sampleRate * BLOCK_S));
    this.sum = 0;
    this.n = 0;
    this.start = 0;
    this.times = [];
    this.db = [];
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || !input.length) return true;
    const channels = input.length;
    const frames = input[0].length;
    for (let k = 0; k < frames; k++) {
      if (this.n === 0) this.start = currentTime + k / sampleRate;
      let s = 0;
      for (let c = 0; c < channels; c++) s += input[c][k] * input[c][k];
      this.sum += s / channels;
      this.n += 1;
      if (this.n === this.block) {
        this.times.push(this.start);
        this.db.push(10 * Math.log10(Math.max(this.sum / this.n, 1e-12)));
        this.sum = 0;
        this.n = 0;
        if (this.times.length === POST_EVERY) {
          this.port.postMessage({ times: this.times, db: this.db });
          this.times = [];
          this.db = [];
        }
      }
    }
    return true;
  }
}

registerProcessor('duetbox-level-tap', LevelTap);
