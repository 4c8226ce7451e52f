// The sana server's page: a form posted to /v1/images/generations, a progress bar fed by /v1/progress/{id}
// (server-sent events, read with fetch so that the API key can be sent), and a gallery of the results with the
// settings each image carries in its own metadata. /?prompt=...&autorun=1 submits on load.
"use strict";

const $ = (id) => document.getElementById(id);
const FINAL = ["done", "failed", "cancelled"];
const FIELDS = ["prompt", "model", "size", "steps", "guidance", "seed"];

function authHeaders(json) {
  const headers = {};
  if (json) headers["Content-Type"] = "application/json";
  const key = $("key").value.trim();
  if (key) headers["Authorization"] = "Bearer " + key;
  return headers;
}

function randomSeed() {
  const word = new Uint32Array(1);
  crypto.getRandomValues(word);
  return word[0] & 0x7fffffff;
}

function randomId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// The file name `sana gen` would give: the prompt's ASCII words joined by '-' (40 characters at most), then the seed.
function slug(prompt) {
  const words = prompt.normalize("NFKD").replace(/[^\x00-\x7f]/g, "").toLowerCase().match(/[a-z0-9]+/g) || [];
  let out = "";
  for (const word of words) {
    const next = out ? out + "-" + word : word;
    if (next.length > 40) break;
    out = next;
  }
  return out || (words.length ? words[0].slice(0, 40) : "image");
}

function setProgress(fraction, text, isError) {
  $("fill").style.width = Math.round(Math.max(0, Math.min(1, fraction)) * 100) + "%";
  $("message").textContent = text;
  $("message").className = isError ? "error" : "";
}

function showEvent(event) {
  if (event.status === "queued") {
    setProgress(0.02, event.ahead ? `queued (${event.ahead} ahead)` : "queued");
  } else if (event.status === "running" && event.total) {
    setProgress(0.05 + 0.85 * event.step / event.total, `denoising: step ${event.step} of ${event.total}`);
  } else if (event.status === "running") {
    const names = { start: "starting", encode: "encoding the prompt", decode: "decoding", denoise: "denoising" };
    setProgress(event.phase === "decode" ? 0.92 : 0.04, names[event.phase] || event.phase);
  } else if (event.status === "failed") {
    setProgress(0, event.message || "failed", true);
  }
}

// Server-sent events from /v1/progress/{id} until a final one (or until `signal` aborts).
async function followProgress(id, signal) {
  const response = await fetch(`/v1/progress/${id}`, { headers: authHeaders(false), signal });
  if (!response.ok || !response.body) return;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of chunk.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const event = JSON.parse(line.slice(6));
        showEvent(event);
        if (FINAL.includes(event.status)) return;
      }
    }
  }
}

// The record a PNG carries in its "sana" text chunk (tEXt, or uncompressed iTXt), or null.
function pngRecord(bytes) {
  const view = new DataView(bytes.buffer);
  const latin1 = new TextDecoder("latin1");
  const utf8 = new TextDecoder("utf-8");
  for (let at = 8; at + 8 <= bytes.length;) {
    const length = view.getUint32(at);
    const type = latin1.decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "tEXt" || type === "iTXt") {
      const nul = data.indexOf(0);
      if (latin1.decode(data.subarray(0, nul)) === "sana") {
        let text;
        if (type === "tEXt") {
          text = latin1.decode(data.subarray(nul + 1));
        } else {
          if (data[nul + 1] !== 0) return null;  // compressed
          let rest = nul + 3;
          rest = data.indexOf(0, rest) + 1;  // language tag
          rest = data.indexOf(0, rest) + 1;  // translated keyword
          text = utf8.decode(data.subarray(rest));
        }
        try { return JSON.parse(text); } catch (_) { return null; }
      }
    }
    if (type === "IEND") break;
    at += 12 + length;
  }
  return null;
}

function addResult(item, asked, index, size) {
  const bytes = Uint8Array.from(atob(item.b64_json), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
  const record = pngRecord(bytes) || {};
  const seed = record.seed ?? asked.seed + index;

  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.alt = asked.prompt;
  img.addEventListener("load", () => {
    img.dataset.naturalSize = `${img.naturalWidth}x${img.naturalHeight}`;
    document.body.dataset.state = "done";
  });
  img.src = url;
  const caption = document.createElement("figcaption");
  const prompt = document.createElement("p");
  prompt.className = "prompt";
  prompt.textContent = asked.prompt;
  const settings = document.createElement("dl");
  const rows = [["model", record.model ?? asked.model], ["size", size], ["steps", record.steps],
                ["guidance", record.guidance], ["sampler", record.sampler], ["seed", seed]];
  for (const [name, value] of rows) {
    if (value === undefined || value === null || value === "") continue;
    const term = document.createElement("dt");
    term.textContent = name;
    const detail = document.createElement("dd");
    detail.textContent = String(value);
    settings.append(term, detail);
  }
  const link = document.createElement("a");
  link.href = url;
  link.download = `${slug(asked.prompt)}-${seed}.png`;
  link.textContent = "download";
  caption.append(prompt, settings, link);
  figure.append(img, caption);
  $("gallery").prepend(figure);
}

async function generate(event) {
  if (event) event.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  const seedText = $("seed").value.trim();
  const asked = { prompt, model: $("model").value, seed: seedText ? Number(seedText) : randomSeed() };
  const body = { prompt, seed: asked.seed, response_format: "b64_json", progress_id: randomId() };
  if (asked.model) body.model = asked.model;
  if ($("size").value) body.size = $("size").value;
  if ($("steps").value) body.num_inference_steps = Number($("steps").value);
  if ($("guidance").value !== "") body.guidance_scale = Number($("guidance").value);

  $("go").disabled = true;
  document.body.dataset.state = "running";
  setProgress(0.01, "sending");
  const stop = new AbortController();
  followProgress(body.progress_id, stop.signal).catch(() => {});
  const started = performance.now();
  try {
    const response = await fetch("/v1/images/generations", {
      method: "POST", headers: authHeaders(true), body: JSON.stringify(body),
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : response.statusText);
    answer.data.forEach((item, index) => addResult(item, asked, index, answer.size));
    const seconds = (performance.now() - started) / 1000;
    setProgress(1, seconds >= 0.05 ? `done in ${seconds.toFixed(1)} s` : "done");
  } catch (err) {
    setProgress(0, err.message, true);
    document.body.dataset.state = "error";
  } finally {
    stop.abort();
    $("go").disabled = false;
  }
}

let maxSide = {};  // the largest side each model accepts (from /healthz)

// Offer only the sizes the chosen model accepts.
function fitSizes() {
  const limit = maxSide[$("model").value];
  for (const option of $("size").options) {
    if (!option.value) continue;
    const [width, height] = option.value.split("x").map(Number);
    option.hidden = option.disabled = limit !== undefined && Math.max(width, height) > limit;
  }
  if ($("size").selectedOptions[0]?.disabled) $("size").value = "";
}

async function loadServer() {
  const health = await (await fetch("/healthz")).json();
  const kinds = health.kinds || {};
  const models = health.models.filter((name) => (kinds[name] || "image") === "image");
  for (const name of models) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    $("model").append(option);
  }
  maxSide = health.max_side || {};
  $("model").addEventListener("change", fitSizes);
  fitSizes();
  if (health.api_key) $("key-label").hidden = false;
  $("server").textContent = `${models.join(", ") || "no image model"} \u00b7 queue ${health.queue_depth}`;
}

window.addEventListener("DOMContentLoaded", async () => {
  $("form").addEventListener("submit", generate);
  $("key").value = sessionStorage.getItem("sana-key") || "";
  $("key").addEventListener("change", () => sessionStorage.setItem("sana-key", $("key").value));
  try {
    await loadServer();
  } catch (_) {
    $("server").textContent = "server unreachable";
  }
  const params = new URLSearchParams(location.search);
  for (const name of FIELDS) {
    if (!params.has(name)) continue;
    const field = $(name);
    if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === params.get(name))) {
      const option = document.createElement("option");
      option.value = option.textContent = params.get(name);
      field.append(option);
    }
    field.value = params.get(name);
  }
  document.body.dataset.state = "ready";
  if (params.get("autorun") === "1" && $("prompt").value.trim()) generate();
});
