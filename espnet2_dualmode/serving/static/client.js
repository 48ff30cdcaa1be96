// Microphone -> 16 kHz 16-bit PCM over /ws/stream (see serving/protocol.py); shows the
// partial text of the segment in progress, the finished segments (cut by the server's
// endpoint rules) with their times, and the server's full-context re-decode of each.
"use strict";
const RATE = 16000;
const $ = (id) => document.getElementById(id);
// ?max_seconds=X: stop by itself after sending exactly X s of audio (0: until pressed)
const MAX_SAMPLES = Math.round(RATE * Number(new URLSearchParams(location.search).get("max_seconds") || 0));
let session = null;  // {ws, context, source, node, media, sent}

function setStatus(text) { $("status").textContent = text; }

// One table row per finished segment (index order): its span, text, token times and,
// once it arrives, its offline re-decode (matched by index: it may come after later partials).
function segmentRow(index) {
  let tr = $("segments").querySelector(`tr[data-index="${index}"]`);
  if (tr === null) {
    tr = document.createElement("tr");
    tr.dataset.index = index;
    for (const cls of ["span", "text", "times", "offline"]) {
      const td = document.createElement("td");
      td.className = cls;
      tr.appendChild(td);
    }
    $("segments").querySelector("table").appendChild(tr);
  }
  return tr;
}

function showSegment(seg) {
  const tr = segmentRow(seg.index);
  tr.querySelector(".span").textContent = `${seg.start.toFixed(2)}-${seg.end.toFixed(2)} s`;
  tr.querySelector(".text").textContent = seg.text;
  tr.querySelector(".times").textContent =
    seg.token_timestamps.map((t) => `${t.token}@${t.time === null ? "?" : t.time.toFixed(2)}s`).join(" ");
}

const offlineTexts = [];  // per segment index

function showOffline(msg) {
  offlineTexts[msg.index] = msg.text;
  segmentRow(msg.index).querySelector(".offline").textContent = `${msg.head}: ${msg.text}`;
  const done = offlineTexts.filter((t) => t !== undefined);
  $("offline").textContent = `${msg.head}: ${done.join(" | ")}`;
  $("offline").dataset.text = done.join(" ");
  const segments = Number($("segments").dataset.count || -1);
  if (done.length === segments) {  // the final came and every segment has its re-decode
    document.body.dataset.offline = "1";
    setStatus("done");
  }
}

function onMessage(event) {
  const msg = JSON.parse(event.data);
  if (msg.type === "ready") {
    setStatus(`streaming (session ${msg.session})`);
    document.body.dataset.session = msg.session;
  } else if (msg.type === "partial") {
    $("partial").textContent = msg.text;  // the segment in progress only
  } else if (msg.type === "segment") {
    showSegment(msg);
    $("partial").textContent = "";
  } else if (msg.type === "final") {
    msg.segments.forEach(showSegment);
    $("segments").dataset.text = msg.text;
    $("segments").dataset.count = msg.segments.length;
    document.body.dataset.final = "1";
    setStatus("final received");
    if (offlineTexts.filter((t) => t !== undefined).length === msg.segments.length) {
      document.body.dataset.offline = "1";
      setStatus("done");
    }
  } else if (msg.type === "offline") {
    showOffline(msg);
  } else if (msg.type === "error") {
    $("error").textContent = `server: ${msg.message}`;
    setStatus("error");
  }  // other types: ignored, as the protocol asks
}

async function start() {
  for (const key of ["final", "offline"]) delete document.body.dataset[key];
  for (const id of ["partial", "offline", "error"]) $(id).textContent = "";
  delete $("segments").dataset.count;
  $("segments").innerHTML = "<table></table>";
  offlineTexts.length = 0;
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
