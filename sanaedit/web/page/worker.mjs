// The editor's thread: loads onnxruntime-web and the model's graphs from this folder (nothing from elsewhere), then
// edits the photos the page sends, so the page stays responsive while a phone works.
// Messages in: {type: "load", config, threads}, {type: "edit", file, settings}. Out: {type: "progress", fraction, text},
// {type: "ready", runtime, loadMs}, {type: "result", width, height, rgb, ms, stages}, {type: "error", message}.

import {PhotoError, decodePhoto} from "./image.mjs";
import {Model} from "./pipeline.mjs";

let model = null;

async function fetchBytes(url, onBytes) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status} ${response.statusText}`);
  const reader = response.body.getReader(), parts = [];
  let size = 0;
  for (;;) {
    const {done, value} = await reader.read();
    if (done) break;
    parts.push(value);
    size += value.length;
    onBytes(value.length);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const part of parts) { bytes.set(part, at); at += part.length; }
  return bytes;
}

// The prompt cache as export/web.py wrote it: float32 arrays at byte offsets in one file
function readConditioning(bytes, entries) {
  const floats = (entry) => new Float32Array(bytes.buffer, entry.offset, entry.shape.reduce((a, b) => a * b, 1));
  const out = {};
  for (const [prompt, entry] of Object.entries(entries)) {
    out[prompt] = {hidden: floats(entry.hidden), mask: floats(entry.mask), hiddenShape: entry.hidden.shape.slice(1)};
  }
  return out;
}

async function load(config, asked) {
  const started = performance.now();
  const ort = await import(new URL(config.runtime.entry, self.location.href).href);
  // threads need cross-origin isolation (SharedArrayBuffer); without it onnxruntime-web runs one
  const byDefault = Math.min(4, Math.ceil((navigator.hardwareConcurrency || 1) / 2));
  const threads = self.crossOriginIsolated ? Math.max(1, Math.min(16, asked || byDefault)) : 1;
  Object.assign(ort.env.wasm, {numThreads: threads, wasmPaths: new URL(config.runtime.folder, self.location.href).href});
  const files = [...Object.values(config.graphs).map((g) => g.file), config.conditioning.file];
  const total = [...Object.values(config.graphs).map((g) => g.bytes), config.conditioning.bytes].reduce((a, b) => a + b, 0);
  let loaded = 0;
  const onBytes = (n) => {
    loaded += n;
    postMessage({type: "progress", fraction: loaded / total, text: `loading the model: ${(loaded / 2 ** 20).toFixed(1)} of ${(total / 2 ** 20).toFixed(1)} MB`});
  };
  const bytes = await Promise.all(files.map((file) => fetchBytes(new URL(file, self.location.href).href, onBytes)));
  postMessage({type: "progress", fraction: 1, text: "starting the runtime…"});
  const sessions = {};
  const names = Object.keys(config.graphs);
  for (const [i, name] of names.entries()) {
    sessions[name] = await ort.InferenceSession.create(bytes[i], {executionProviders: ["wasm"], graphOptimizationLevel: "all"});
  }
  model = new Model(ort, config, sessions, readConditioning(bytes[names.length], config.conditioning.entries));
  const runtime = {backend: "WebAssembly (SIMD)", threads, isolated: self.crossOriginIsolated, version: config.runtime.version};
  postMessage({type: "ready", runtime, loadMs: performance.now() - started});
}

async function edit(file, settings) {
  const started = performance.now();
  const photo = await decodePhoto(file, model.config.limits);
  const decodeMs = performance.now() - started;
  const progress = (fraction, text) => postMessage({type: "progress", fraction, text});
  const {image, stages} = await model.edit(photo, settings, progress);
  const ms = performance.now() - started;
  postMessage({type: "result", width: image.width, height: image.height, rgb: image.rgb, ms,
               stages: [["decode photo", decodeMs], ...stages]}, [image.rgb.buffer]);
}

self.onmessage = async ({data}) => {
  try {
    if (data.type === "load") await load(data.config, data.threads);
    if (data.type === "edit") await edit(data.file, data.settings);
  } catch (err) {
    const message = err instanceof PhotoError ? err.message : `${err?.message || err}`;
    postMessage({type: "error", message, during: data.type});
  }
};
