// Microphone -> 16 kHz 16-bit PCM over /ws/stream (see serving/protocol.py); shows the
// partial text, the final segments and the server's full-context re-decode of the stream.
"use strict";
const RATE = 16000;
const $ = (id) => document.getElementById(id);
// ?max_seconds=X: stop by itself after sending exactly X s of audio (0: until pressed)
const MAX_SAMPLES = Math.round(RATE * Number(new URLSearchParams(location.search).get("max_seconds") || 0));
let session = null;  // {ws, context, source, node, media, sent}

function setStatus(text) { $("status").textContent = text; }

function showSegments(msg, box) {
  const rows = msg.segments.map((s) =>
    `<tr><td>${s.start.toFixed(2)}-${s.end.toFixed(2)} s</td><td class="text"></td><td class="times"></td></tr>`);
  box.innerHTML = `<table>${rows.join("")}</table>`;
  box.querySelectorAll("tr").forEach((tr, i) => {
    const seg = msg.segments[i];
    tr.querySelector(".text").textContent = seg.text;
    tr.querySelector(".times").textContent =
      seg.token_timestamps.map((t) => `${t.token}@${t.time === null ? "?" : t.time.toFixed(2)}s`).join(" ");
  });
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "ready") {
    setStatus(`streaming (session ${msg.session})`);
    document.body.dataset.session = msg.session;
  } else if (msg.type === "partial") {
    $("partial").textContent = msg.text;
  } else if (msg.type === "final") {
    $("partial").textContent = msg.text;
    $("segments").dataset.text = msg.text;
    showSegments(msg, $("segments"));
    document.body.dataset.final = "1";
    setStatus("final received");
  } else if (msg.type === "offline") {
    $("offline").textContent = `${msg.head}: ${msg.text}`;
    $("offline").dataset.text = msg.text;
    document.body.dataset.offline = "1";
    setStatus("done");
  } else if (msg.type === "error") {
    $("error").textContent = `server: ${msg.message}`;
    setStatus("error");
  }  // other types: ignored, as the protocol asks
}

async function start() {
  for (const key of ["final", "offline"]) delete document.body.dataset[key];
  for (const id of ["partial", "segments", "offline", "error"]) $(id).textContent = "";
  const media = await navigator.mediaDevices.getUserMedia(
    { audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  const context = new AudioContext({ sampleRate: RATE });  // the browser resamples the microphone
  await context.audioWorklet.addModule("static/pcm_worklet.js");
  const source = context.createMediaStreamSource(media);
  const node = new AudioWorkletNode(context, "pcm-chunker");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/stream`);
  ws.onmessage = onMessage;
  ws.onclose = () => { if ($("status").textContent.startsWith("streaming")) setStatus("closed"); };
  session = { ws, context, source, node, media, sent: 0 };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(JSON.stringify({ type: "start", sample_rate: RATE, format: "pcm_s16le",
                           offline_head: $("head").value }));
  node.port.onmessage = (e) => {
    if (ws.readyState !== WebSocket.OPEN || session === null) return;
    let pcm = new Int16Array(e.data);
    if (MAX_SAMPLES) pcm = pcm.subarray(0, MAX_SAMPLES - session.sent);
    ws.send(pcm);
    session.sent += pcm.length;
    $("seconds").textContent = (session.sent / RATE).toFixed(1);
    if (MAX_SAMPLES && session.sent >= MAX_SAMPLES) stop().catch(showError);
  };
  source.connect(node);
  $("mic").textContent = "Stop";
}

async function stop() {
  const s = session;
  session = null;
  s.source.disconnect();
  s.node.port.onmessage = null;
  s.media.getTracks().forEach((t) => t.stop());
  await s.context.close();
  if (s.ws.readyState === WebSocket.OPEN) s.ws.send(JSON.stringify({ type: "end" }));
  setStatus("decoding");
  $("mic").textContent = "Start microphone";
}

function showError(e) { $("error").textContent = String(e); setStatus("error"); }

$("mic").onclick = () => { (session ? stop() : start()).catch(showError); };
