// avlm browser demo. The camera and microphone are recorded with
// MediaRecorder and sent over a WebSocket to the server that served this
// page; its transcript and captions are drawn over the video.
//
// The socket (ws://HOST/ws, wss:// behind TLS):
//   client -> server
//     text   {"type":"start","video":bool,"mime":"video/webm;codecs=vp8,opus",
//             "partials":bool,"captions":bool,"lips":bool,"token":"..."}
//            first and once; partials, captions and lips default to true,
//            token is needed when the server runs with --auth-token-file
//     binary the recorder's chunks, in order, each at most 1 MiB
//     text   {"type":"stop"}: no more media; the last words still come
//   server -> client (JSON text)
//     ready        {session_id, modalities, captions, lips, model}
//     speech_start {segment_id, start_s}
//     speech_end   {segment_id, start_s, end_s}
//     partial      {segment_id, stable, unstable, start_s, end_s}
//     final        {segment_id, text, start_s, end_s, latency_s}
//     caption      {text, media_time_s, latency_s}
//     stats        {media_s, processed_s, buffered_s, expected_delay_s, ...}
//     end          the session is over (after stop)
//     error        {code, message}: code is the gRPC status name
//                  (INVALID_ARGUMENT, UNAUTHENTICATED, ...); the socket closes
"use strict";

const $ = (id) => document.getElementById(id);
const FINALS_SHOWN = 4;
const CAPTIONS_SHOWN = 2;
const CHUNK_MS = 250;

let socket = null;
let recorder = null;
let media = null;

function setState(state, text) {
  document.body.dataset.state = state;
  if (text !== undefined) $("status").textContent = text;
  const running = state === "connecting" || state === "live" || state === "stopping";
  $("start").disabled = running;
  $("stop").disabled = !running;
}

function showError(code, message) {
  const box = $("error");
  box.replaceChildren();
  const b = document.createElement("b");
  b.textContent = code;
  box.append(b, document.createTextNode(message));
  box.hidden = false;
  document.body.dataset.error = code;
  if (code === "UNAUTHENTICATED") $("token-box").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  delete document.body.dataset.error;
}

function bump(key) {
  document.body.dataset[key] = String(Number(document.body.dataset[key]) + 1);
}

function clock(s) {
  const t = Math.max(0, Math.round(s * 10));
  const m = Math.floor(t / 600);
  const sec = Math.floor(t / 10) % 60;
  return `${m}:${String(sec).padStart(2, "0")}.${t % 10}`;
}

function keepLast(list, n) {
  while (list.children.length > n) list.firstElementChild.remove();
}

function setPartial(stable, unstable) {
  $("partial").querySelector(".stable").textContent = stable;
  $("partial").querySelector(".unstable").textContent = unstable;
}

function token() {
  const typed = $("token").value.trim();
  if (typed) return typed;
  const hash = new URLSearchParams(location.hash.slice(1));
  return hash.get("token") || undefined;
}

// The first container and codecs this browser records.
function recorderMime(video) {
  const choices = video
    ? ["video/webm;codecs=vp8,opus", "video/webm;codecs=vp9,opus", "video/webm", "video/mp4"]
    : ["audio/webm;codecs=opus", "audio/webm", "audio/ogg;codecs=opus", "audio/mp4"];
  return choices.find((m) => MediaRecorder.isTypeSupported(m)) || "";
}

async function openMedia(wantVideo) {
  const audio = { echoCancellation: true, noiseSuppression: false, channelCount: 1 };
  if (wantVideo) {
    try {
      return await navigator.mediaDevices.getUserMedia({
        audio,
        video: { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 25 } },
      });
    } catch (e) {
      // No camera (or it was refused): sound only.
      console.warn("camera unavailable:", e);
    }
  }
  return navigator.mediaDevices.getUserMedia({ audio, video: false });
}

async function start() {
  clearError();
  $("finals").replaceChildren();
  $("captions").replaceChildren();
  setPartial("", "");
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    showError("FAILED_PRECONDITION",
      "this browser cannot record here (camera access needs a secure page: https, or localhost)");
    return;
  }
  setState("connecting", "opening the camera and microphone…");
  try {
    media = await openMedia($("camera").checked);
  } catch (e) {
    setState("idle", "");
    showError("NO_MICROPHONE", `${e.name}: ${e.message}`);
    return;
  }
  const video = media.getVideoTracks().length > 0;
  document.body.classList.toggle("audio-only", !video);
  $("video").srcObject = media;
  const mime = recorderMime(video);
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => {
    setState("connecting", "starting the session…");
    socket.send(JSON.stringify({
      type: "start", video, mime, partials: true,
      captions: $("want-captions").checked, token: token(),
    }));
  };
  socket.onmessage = (e) => {
    if (typeof e.data === "string") handle(JSON.parse(e.data), mime);
  };
  socket.onclose = (e) => {
    stopRecording();
    const state = document.body.dataset.state;
    if (state !== "idle") {
      const why = document.body.dataset.error ? "stopped" : (e.code === 1000 ? "done" : `closed (${e.code})`);
      setState("idle", why);
    }
    socket = null;
  };
}

function startRecording(mime) {
  recorder = new MediaRecorder(media, mime ? { mimeType: mime } : {});
  // Chunks are read asynchronously: one chain keeps them, and the stop
  // message after them, in order.
  let sending = Promise.resolve();
  const send = (data) => {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  };
  recorder.ondataavailable = (e) => {
    if (e.data.size > 0) sending = sending.then(() => e.data.arrayBuffer()).then(send);
  };
  // The last chunk is delivered before stop fires.
  recorder.onstop = () => {
    sending = sending.then(() => send(JSON.stringify({ type: "stop" })));
  };
  recorder.start(CHUNK_MS);
}

function stopRecording() {
  if (recorder && recorder.state !== "inactive") recorder.stop();
  recorder = null;
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
}

function stop() {
  setState("stopping", "finishing the last words…");
  if (recorder && recorder.state !== "inactive") {
    recorder.stop();
    recorder = null;
    if (media) media.getTracks().forEach((t) => t.stop());
    media = null;
  } else if (socket) {
    socket.close();
  }
}

function handle(ev, mime) {
  switch (ev.type) {
    case "ready": {
      const parts = [ev.modalities === "audio" ? "sound" : "sound and video"];
      if (ev.lips) parts.push("reading lips");
      if (ev.captions) parts.push("captions on");
      setState("live", `live: ${parts.join(", ")} — ${ev.model}`);
      document.body.dataset.session = ev.session_id;
      startRecording(mime);
      break;
    }
    case "partial":
      setPartial(ev.stable, ev.unstable);
      bump("partials");
      break;
    case "final": {
      setPartial("", "");
      if (!ev.text.trim()) break;
      const li = document.createElement("li");
      li.className = "final";
      const t = document.createElement("time");
      t.textContent = clock(ev.start_s);
      li.append(t, document.createTextNode(ev.text.trim()));
      $("finals").append(li);
      keepLast($("finals"), FINALS_SHOWN);
      bump("finals");
      break;
    }
    case "caption": {
      const li = document.createElement("li");
      li.className = "caption";
      li.textContent = ev.text.trim();
      li.title = `at ${clock(ev.media_time_s)}`;
      $("captions").append(li);
      keepLast($("captions"), CAPTIONS_SHOWN);
      bump("captions");
      break;
    }
    case "stats":
      $("stats").textContent =
        `media ${ev.media_s.toFixed(1)} s · delay ${ev.expected_delay_s.toFixed(2)} s` +
        (ev.video_frames ? ` · ${ev.video_frames} frames` : "") +
        (ev.caption_frames ? ` · ${ev.caption_frames} looked at` : "");
      break;
    case "end":
      setState("idle", "done");
      break;
    case "error":
      showError(ev.code, ev.message);
      setState("idle", "stopped");
      break;
    default:
      break;
  }
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
