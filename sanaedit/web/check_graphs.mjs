// Loads every graph a web folder's config.json names in that folder's own onnxruntime-web (the WebAssembly build)
// under Node.js, and prints one JSON line: {"node": version, "graphs": {name: null | "why it failed"}}.
// Run by sanaedit/export/web.py when it writes a web folder: `node check_graphs.mjs WEB_FOLDER`.
import {readFileSync} from "node:fs";
import {join} from "node:path";
import {pathToFileURL} from "node:url";

const folder = process.argv[2];
const config = JSON.parse(readFileSync(join(folder, "config.json"), "utf8"));
const runtime = join(folder, config.runtime.folder);
const ort = await import(pathToFileURL(join(folder, config.runtime.entry)).href);
ort.env.wasm.numThreads = 1;
ort.env.wasm.wasmPaths = runtime.endsWith("/") ? runtime : runtime + "/";
ort.env.logLevel = "error";
const graphs = {};
for (const [name, graph] of Object.entries(config.graphs)) {
  try {
    const session = await ort.InferenceSession.create(readFileSync(join(folder, graph.file)), {executionProviders: ["wasm"]});
    await session.release();
    graphs[name] = null;
  } catch (err) {
    graphs[name] = String(err?.message || err).split("\n")[0].slice(0, 300);
  }
}
console.log(JSON.stringify({node: process.version, graphs}));
