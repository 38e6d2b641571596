// The page: picks a photo (or the camera's), hands it to the editor's thread (worker.mjs) and shows the progress,
// what it runs on, how long it took, and the before/after with its download. Nothing is sent anywhere: the only
// requests are for this folder's own files.

import {downloadName, showCompare} from "./compare.mjs";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("config.json")).json();
const worker = new Worker(new URL("worker.mjs", import.meta.url), {type: "module"});
let current = null;  // {file, url, started}
let resultUrl = null;

const {pipeline, limits} = config;
$("steps").value = pipeline.num_inference_steps;
$("steps").max = limits.max_steps;
$("guidance").value = pipeline.guidance_scale;
$("about").textContent = `${config.model} · onnxruntime-web ${config.runtime.version}`;
if (config.server_page) {  // served by `sanaedit serve`: it can also edit on the server
  $("switch").hidden = false;
  $("to-server").href = `${config.server_page}?run=server`;
  $("to-server").onclick = () => localStorage.setItem("sanaedit-run", "server");
  localStorage.setItem("sanaedit-run", "device");
}

function status(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

const seconds = (ms) => `${(ms / 1000).toFixed(1)} s`;

worker.onmessage = ({data}) => {
  if (data.type === "progress") {
    $("bar").value = data.fraction;
    status(data.text);
  } else if (data.type === "ready") {
    const r = data.runtime;
    const threads = `${r.threads} thread${r.threads > 1 ? "s" : ""}`;
    const why = r.isolated ? "" : " (one: the server does not send cross-origin isolation headers)";
    $("runtime").textContent = `Runs on: ${r.backend}, ${threads}${why}`;
    $("runtime").dataset.threads = r.threads;
    $("timing").textContent = `model loaded in ${seconds(data.loadMs)}`;
    $("timing").dataset.loadMs = Math.round(data.loadMs);
    $("bar").value = 0;
    status("ready: pick a photo");
    $("run").disabled = false;
  } else if (data.type === "result") {
    const canvas = document.createElement("canvas");
    canvas.width = data.width;
    canvas.height = data.height;
    const rgba = new Uint8ClampedArray(data.width * data.height * 4);
    for (let i = 0, j = 0; i < data.rgb.length; i += 3, j += 4) {
      rgba[j] = data.rgb[i]; rgba[j + 1] = data.rgb[i + 1]; rgba[j + 2] = data.rgb[i + 2]; rgba[j + 3] = 255;
    }
    canvas.getContext("2d").putImageData(new ImageData(rgba, data.width, data.height), 0, 0);
    canvas.toBlob((png) => {
      if (resultUrl) URL.revokeObjectURL(resultUrl);
      resultUrl = URL.createObjectURL(png);
      showCompare($("out"), current.url, resultUrl, downloadName(current.file.name));
      const wall = performance.now() - current.started;
      const stages = data.stages.map(([name, ms]) => `${name} ${seconds(ms)}`).join(", ");
      $("timing").textContent = `edited in ${seconds(data.ms)} on this device (${stages})`;
      const stageMs = Object.fromEntries(data.stages.map(([name, ms]) => [name, Math.round(ms)]));
      Object.assign($("timing").dataset, {stages: JSON.stringify(stageMs), editMs: Math.round(data.ms), wallMs: Math.round(wall)});
      status("done");
      $("run").disabled = false;
    }, "image/png");
  } else if (data.type === "error") {
    status(data.during === "load" ? `cannot start the editor here: ${data.message}` : data.message, true);
    $("run").disabled = data.during === "load";
  }
};
worker.onerror = (event) => status(`the editor stopped: ${event.message || "unknown error"}`, true);
// ?threads=N asks for N WebAssembly threads (bench/); the default is onnxruntime-web's, half the cores up to 4
worker.postMessage({type: "load", config, threads: Number(new URLSearchParams(location.search).get("threads")) || 0});

function pick(input) {
  if (input.files.length) {
    $("name").textContent = input.files[0].name;
    if (input === $("camera")) $("file").value = "";
  }
}
$("file").onchange = () => pick($("file"));
$("camera").onchange = () => pick($("camera"));

$("form").onsubmit = (event) => {
  event.preventDefault();
  const file = $("file").files[0] || $("camera").files[0];
  if (!file) return status("pick a photo first", true);
  if (current) URL.revokeObjectURL(current.url);
  current = {file, url: URL.createObjectURL(file), started: performance.now()};
  $("run").disabled = true;
  $("out").innerHTML = "";
  delete $("timing").dataset.editMs;
  const settings = {
    steps: Number($("steps").value) || pipeline.num_inference_steps,
    guidance: Number($("guidance").value) || pipeline.guidance_scale,
    seed: $("seed").value.trim() || "0",
  };
  worker.postMessage({type: "edit", file, settings});
};
