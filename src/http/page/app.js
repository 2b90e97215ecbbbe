// wharf's operator page: the models and their state, and a form that sends an image to
// an image-in model (one BYTES input and a `boxes` output, as the PP-OCR pipeline has)
// and draws the boxes and text it answers over the image. Only this server's own
// KServe v2 routes are called.
"use strict";

const $ = (id) => document.getElementById(id);
const BOX = "#d6007b";
/** name -> { input, outputs } of the READY models that take an image. */
const imageModels = new Map();

async function call(path, options = {}) {
  const key = $("key").value;
  const headers = { ...(options.headers || {}) };
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(path, { ...options, headers });
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    throw new Error(body && body.error ? body.error : `${response.status} ${response.statusText}`);
  }
  return body;
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
}

async function refresh() {
  try {
    const server = await call("/v2");
    $("server").textContent = `${server.name} ${server.version}`;
    const models = await call("/v2/repository/index", { method: "POST", body: "{}" });
    const rows = $("models").tBodies[0];
    rows.replaceChildren();
    for (const m of models) {
      const row = rows.insertRow();
      const state = m.state || "UNAVAILABLE";
      cell(row, m.name);
      cell(row, m.version || "");
      cell(row, state, state.toLowerCase());
      cell(row, m.reason || "");
    }
    const ready = [...new Set(models.filter((m) => m.state === "READY").map((m) => m.name))];
    await findImageModels(ready);
    $("status").textContent = imageModels.size ? "" : "No READY model takes an image.";
  } catch (e) {
    $("status").textContent = `Cannot list the models: ${e.message}`;
  }
}

async function findImageModels(names) {
  imageModels.clear();
  for (const name of names) {
    const meta = await call(`/v2/models/${encodeURIComponent(name)}`);
    const inputs = meta.inputs || [];
    const outputs = (meta.outputs || []).map((o) => o.name);
    if (inputs.length === 1 && inputs[0].datatype === "BYTES" && outputs.includes("boxes")) {
      imageModels.set(name, { input: inputs[0].name, outputs });
    }
  }
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...[...imageModels.keys()].map((name) => new Option(name, name)));
  if (imageModels.has(chosen)) select.value = chosen;
}

/** The request in the binary tensor extension: a JSON header, then the image as one BYTES element. */
function inferBody(input, outputs, image) {
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{ name: input, shape: [1], datatype: "BYTES", parameters: { binary_data_size: image.length + 4 } }],
    outputs: ["boxes", "text", "text_score"].filter((n) => outputs.includes(n)).map((name) => ({ name })),
  }));
  const body = new Uint8Array(header.length + 4 + image.length);
  body.set(header, 0);
  new DataView(body.buffer).setUint32(header.length, image.length, true);
  body.set(image, header.length + 4);
  return { body, headerLength: header.length };
}

function linesOf(answer) {
  const byName = Object.fromEntries(answer.outputs.map((o) => [o.name, o]));
  const boxes = byName.boxes;
  const count = boxes.shape[0];
  return Array.from({ length: count }, (_, i) => ({
    box: [0, 1, 2, 3].map((k) => [boxes.data[i * 8 + k * 2], boxes.data[i * 8 + k * 2 + 1]]),
    text: byName.text ? byName.text.data[i] : "",
    score: byName.text_score ? byName.text_score.data[i] : null,
  }));
}

async function draw(file, lines) {
  const image = await createImageBitmap(file);
  const canvas = $("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  const g = canvas.getContext("2d");
  g.drawImage(image, 0, 0);
  const scale = Math.max(1, image.width / 900);
  g.lineWidth = 2 * scale;
  g.font = `${13 * scale}px "Noto Sans CJK SC", sans-serif`;
  lines.forEach((line, i) => {
    g.strokeStyle = BOX;
    g.beginPath();
    line.box.forEach(([x, y], k) => (k ? g.lineTo(x, y) : g.moveTo(x, y)));
    g.closePath();
    g.stroke();
    const label = `${i + 1} ${line.text}`;
    const [x, y] = line.box[0];
    const height = 17 * scale;
    g.fillStyle = "rgba(255, 255, 255, 0.85)";
    g.fillRect(x, y - height, g.measureText(label).width + 6 * scale, height);
    g.fillStyle = BOX;
    g.fillText(label, x + 3 * scale, y - 4 * scale);
  });
}

function list(lines) {
  $("lines").replaceChildren(...lines.map((line) => {
    const item = document.createElement("li");
    item.textContent = line.text;
    if (line.score !== null) {
      const score = document.createElement("small");
      score.textContent = ` ${line.score.toFixed(3)}`;
      item.append(score);
    }
    return item;
  }));
}

async function read(event) {
  event.preventDefault();
  const file = $("image").files[0];
  const model = $("model").value;
  const chosen = imageModels.get(model);
  if (!file || !chosen) {
    $("status").textContent = "Choose a model and an image.";
    return;
  }
  const { body, headerLength } = inferBody(chosen.input, chosen.outputs, new Uint8Array(await file.arrayBuffer()));
  $("status").textContent = `Reading ${file.name} with ${model}…`;
  const started = performance.now();
  try {
    const answer = await call(`/v2/models/${encodeURIComponent(model)}/infer`, {
      method: "POST",
      headers: { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(headerLength) },
      body,
    });
    const lines = linesOf(answer);
    await draw(file, lines);
    list(lines);
    const took = Math.round(performance.now() - started);
    $("status").textContent = `${lines.length} lines from ${file.name} in ${took} ms.`;
  } catch (e) {
    $("canvas").width = 0;
    $("lines").replaceChildren();
    $("status").textContent = `${model} could not read ${file.name}: ${e.message}`;
  }
}

$("refresh").addEventListener("click", refresh);
$("read").addEventListener("submit", read);
refresh();
