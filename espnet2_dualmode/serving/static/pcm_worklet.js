// Runs in the AudioContext at 16 kHz: float samples -> 16-bit PCM chunks of 100 ms.
class PcmChunker extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunk = new Int16Array(1600);
    this.fill = 0;
  }
  process(inputs) {
    const channel = inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        const s = Math.max(-1, Math.min(1, channel[i]));
        this.chunk[this.fill++] = s < 0 ? s * 32768 : s * 32767;
        if (this.fill === this.chunk.length) {
          this.port.postMessage(this.chunk.buffer, [this.chunk.buffer]);
          this.chunk = new Int16Array(1600);
          this.fill = 0;
        }
      }
    }
    return true;
  }
}
registerProcessor("pcm-chunker", PcmChunker);
