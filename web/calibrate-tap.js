// Records what the microphone delivers, with the audio context frame of its first
// sample, for the round-trip calibration (calibrate.js; an AudioWorklet module).
//
// Posts { from: context frame, samples: Float32Array } for every 4096 frames of the
// first input channel, until told 'stop' on its port. No output of its own.

const CHUNK = 4096;

class CalibrateTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.buf = new Float32Array(CHUNK);
    this.n = 0;
    this.from = 0;
    this.running = true;
    this.port.onmessage = (ev) => {
      if (ev.data === 'stop') this.running = false;
    };
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    const channel = input && input[0];
    const frames = channel ? channel.length : 128;
    for (let k = 0; k < frames; k++) {
      if (this.n === 0) this.from = currentFrame + k;
      this.buf[this.n++] = channel ? channel[k] : 0;
      if (this.n === CHUNK) {
        this.port.postMessage({ from: this.from, samples: this.buf }, [this.buf.buffer]);
        this.buf = new Float32Array(CHUNK);
        this.n = 0;
      }
    }
    return true;
  }
}

registerProcessor('duetbox-calibrate-tap', CalibrateTap);
