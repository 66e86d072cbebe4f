// Draw (or drop) a digit, pick a number, ask POST /predict?debug=true and show what came back.
// Plain JavaScript, no build step, nothing from outside this origin (the page's CSP forbids it).
"use strict";

const INK = "#111111"; // dark ink on white paper; the server reads either polarity
const PAPER = "#ffffff";
const STROKE = 0.07; // pen width as a share of the canvas side: MNIST strokes are ~1/8 of the digit height
const AUTO_DELAY_MS = 600; // after the last stroke: long enough to start the next stroke of a 4 or a 7

const $ = (id) => document.getElementById(id);
const form = $("form");
const pad = $("pad");
const ctx = pad.getContext("2d");
const fileInput = $("file");
const drop = $("drop");
const auto = $("auto");

let upload = null; // a File the user chose or dropped; null when the drawing is the input
let hasInk = false;
let pen = null; // { id, x, y } while a pointer draws
let autoTimer = 0;
let inflight = null; // AbortController of the request whose answer we are waiting for

// ---- drawing -------------------------------------------------------------------------------------------

function clearPad() {
  ctx.fillStyle = PAPER;
  ctx.fillRect(0, 0, pad.width, pad.height);
  upload = null;
  hasInk = false;
}

function toCanvas(event) {
  // The bounding box includes the canvas's CSS border; the bitmap covers only the content box inside it
  // (clientLeft/Top = border widths, clientWidth/Height = the content box: the canvas has no padding).
  const box = pad.getBoundingClientRect();
  return {
    x: (event.clientX - box.left - pad.clientLeft) * (pad.width / pad.clientWidth),
    y: (event.clientY - box.top - pad.clientTop) * (pad.height / pad.clientHeight),
  };
}

function dot(at) {
  // A zero-length line draws nothing in Chromium, whatever its round cap: a tap needs a filled disc.
  ctx.fillStyle = INK;
  ctx.beginPath();
  ctx.arc(at.x, at.y, (STROKE * pad.width) / 2, 0, 2 * Math.PI);
  ctx.fill();
}

function segment(from, to) {
  ctx.strokeStyle = INK;
  ctx.lineWidth = STROKE * pad.width;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(from.x, from.y);
  ctx.lineTo(to.x, to.y);
  ctx.stroke();
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || pen) return;
  event.preventDefault();
  cancelAuto();
  if (upload) clearPad(); // drawing replaces a dropped picture
  pad.setPointerCapture(event.pointerId);
  const point = toCanvas(event);
  pen = { id: event.pointerId, ...point };
  dot(point); // a tap leaves a dot
  hasInk = true;
});

pad.addEventListener("pointermove", (event) => {
  if (!pen || event.pointerId !== pen.id) return;
  // Coalesced events keep fast strokes smooth: the browser may fire one pointermove per frame.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
  for (const each of events.length ? events : [event]) {
    const point = toCanvas(each);
    segment(pen, point);
    Object.assign(pen, point);
  }
});

function penUp(event) {
  if (!pen || event.pointerId !== pen.id) return;
  pen = null;
  if (auto.checked) scheduleAuto();
}
pad.addEventListener("pointerup", penUp);
pad.addEventListener("pointercancel", penUp);

$("clear").addEventListener("click", () => {
  cancelAuto();
  clearPad();
  showIdle("Cleared. Draw a digit, then press Predict.");
});

// ---- a picture instead of a drawing -----------------------------------------------------------------

async function useFile(file) {
  if (!file) return;
  clearPad();
  upload = file;
  hasInk = true;
  await preview(file);
  predict();
}

async function preview(file) {
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    bitmap.close();
  } catch {
    // Not every format the server reads (TIFF) can be shown here; the server still gets the file.
    ctx.fillStyle = "#666666";
    ctx.font = `${Math.round(pad.width / 20)}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.fillText(file.name || "your image", pad.width / 2, pad.height / 2);
  }
}

fileInput.addEventListener("change", () => {
  useFile(fileInput.files[0]);
  fileInput.value = ""; // choosing the same file again should still fire "change"
});

for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (event) => {
    event.preventDefault();
    drop.classList.add("dragging");
  });
}
drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("dragging");
  useFile(event.dataTransfer.files[0]);
});

// ---- predicting ---------------------------------------------------------------------------------------

function scheduleAuto() {
  cancelAuto();
  autoTimer = setTimeout(predict, AUTO_DELAY_MS);
}

function cancelAuto() {
  clearTimeout(autoTimer);
}

function chosenNumber() {
  return form.elements.number.value;
}

function canvasBlob() {
  return new Promise((resolve) => pad.toBlob(resolve, "image/png"));
}

async function predict() {
  cancelAuto();
  if (!hasInk) {
    // A blank canvas has no digit: say so here instead of sending it for the service to refuse.
    showIdle("Nothing to read yet: draw a digit or upload a picture first.");
    return;
  }
  inflight?.abort(); // only the latest drawing's answer is worth showing
  const controller = (inflight = new AbortController());
  form.setAttribute("aria-busy", "true");
  $("predict").classList.add("busy"); // not disabled: a disabled button drops the keyboard focus
  try {
    const body = new FormData();
    body.append("image", upload ?? (await canvasBlob()), upload ? upload.name : "drawing.png");
    body.append("number", chosenNumber());
    const response = await fetch("/predict?debug=true", { method: "POST", body, signal: controller.signal });
    const payload = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(errorSentence(response, payload));
    showResult(payload);
  } catch (error) {
    if (error.name === "AbortError") return;
    showError(error instanceof ApiError ? error.message : "Could not reach the service; check the connection and try again.");
  } finally {
    if (inflight === controller) {
      inflight = null;
      form.removeAttribute("aria-busy");
      $("predict").classList.remove("busy");
    }
  }
}

class ApiError extends Error {}

function errorSentence(response, payload) {
  const detail = payload?.detail;
  if (typeof detail === "string") return detail; // the API's errors are one human sentence
  if (Array.isArray(detail) && detail[0]?.msg) return detail[0].msg;
  return `The service answered ${response.status} ${response.statusText || "with an error"}; try again.`;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  predict();
});

// Enter predicts from any control (radios and checkboxes do not submit a form by themselves).
form.addEventListener("keydown", (event) => {
  const target = event.target;
  if (event.key !== "Enter" || target.tagName === "BUTTON" || target.tagName === "LABEL") return;
  if (target === fileInput || target.tagName === "A") return;
  event.preventDefault();
  predict();
});

$("numbers").addEventListener("change", () => {
  if (hasInk && auto.checked && !$("result").hidden) predict(); // keep a shown sum in step with the number
});

// ---- showing --------------------------------------------------------------------------------------------

function percent(p) {
  if (p >= 0.9995) return "> 99.9%";
  if (p < 0.0005) return "< 0.1%";
  return `${(p * 100).toFixed(p > 0.99 || p < 0.01 ? 1 : 0)}%`;
}

function showResult(r) {
  $("error").hidden = true;
  $("result").hidden = false;
  $("status").classList.add("visually-hidden"); // the equation says it; screen readers still hear it
  $("digit").textContent = r.digit;
  $("number-out").textContent = r.number;
  $("sum").textContent = r.sum;
  $("digit-confidence").textContent = percent(r.digit_confidence);
  $("sum-confidence").textContent = percent(r.sum_confidence);
  // The answer's arithmetic is always right (the service decides digit and sum jointly); when the two
  // heads split or the digit is unsure, say so beside it rather than present the guess as fact.
  const doubt = r.no_digit
    ? "This does not look like a digit: a letter, a shape or a scribble?"
    : r.heads_agree === false
      ? "Not sure: the network's digit and sum readings disagree here; is this a single clear digit?"
      : "Not sure — is this a single clear digit?";
  $("hint").textContent = doubt;
  $("hint").hidden = !r.low_confidence;
  $("result").classList.toggle("unsure", r.low_confidence);
  drawBars(r.digit_probabilities, r.digit);
  const seen = $("seen");
  seen.hidden = !r.input_image;
  if (r.input_image) seen.src = r.input_image;
  const unsure = r.low_confidence ? ` ${doubt}` : "";
  $("status").textContent =
    `${r.low_confidence ? "Best guess" : "Recognised"} ${r.digit} (${percent(r.digit_confidence)} sure): ${r.digit} + ${r.number} = ${r.sum}.${unsure}`;
}

function drawBars(probabilities, digit) {
  const bars = $("bars");
  bars.replaceChildren(
    ...probabilities.map((p, d) => {
      const item = document.createElement("li");
      item.className = d === digit ? "bar top" : "bar";
      item.style.setProperty("--p", p.toFixed(4)); // CSSOM, allowed by the CSP (inline style= is not)
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.append(fill);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = d;
      const value = document.createElement("span");
      value.className = "visually-hidden";
      value.textContent = `: ${percent(p)}`;
      item.append(track, label, value);
      item.title = `${d}: ${percent(p)}`;
      return item;
    }),
  );
}

function showError(message) {
  $("status").classList.add("visually-hidden"); // the alert says it
  $("result").hidden = true;
  $("error").hidden = false;
  $("error").textContent = message;
  $("status").textContent = "";
}

function showIdle(message) {
  inflight?.abort();
  $("result").hidden = true;
  $("error").hidden = true;
  $("status").classList.remove("visually-hidden");
  $("status").textContent = message;
}

clearPad();
