// One edit in the browser, stage for stage as sanaedit/pipeline.py's _edit runs it: preprocess, encode the photo,
// the model's own prompt from the prompt cache (no LLM here), the sampler over the transformer graph (CFG as one
// [negative, prompt] batch), decode, then back to the photo's own size (guided filter, refiner). Every number the
// Python decides (noise levels, timestep scale, upsampling settings) comes from config.json, which
// `sanaedit export --format web` writes from the Python definitions.

import {Generator} from "./noise.mjs";
import {postprocess, preprocess} from "./image.mjs";
import {refineInTiles} from "./refine.mjs";
import {SAMPLERS} from "./sampling.mjs";
import {upsample} from "./upsample.mjs";

const f32 = Math.fround;

// How much of the progress bar each stage fills (the denoising steps share theirs)
const SHARE = {prepare: 0.04, encode: 0.06, denoise: 0.7, decode: 0.05, upsample: 0.07, refine: 0.08};

export class Model {
  // `sessions`: name -> onnxruntime-web InferenceSession; `conditioning`: prompt -> {hidden, mask} (Float32Array)
  constructor(ort, config, sessions, conditioning) {
    Object.assign(this, {ort, config, sessions, conditioning});
  }

  async run(name, ...arrays) {
    const graph = this.config.graphs[name];
    const feeds = {};
    graph.inputs.forEach((input, i) => {
      const [data, dims] = arrays[i];
      feeds[input] = new this.ort.Tensor("float32", data, dims);
    });
    const outputs = await this.sessions[name].run(feeds);
    return outputs[graph.outputs[0]].data;
  }

  // The DiT's velocity for latents x at noise level sigma (float32), with CFG when guidance > 1
  velocityFunction(prompt, negative, ref, guidance) {
    const {latent} = this.config, n = latent.channels * latent.size * latent.size;
    const dims = (batch) => [batch, latent.channels, latent.size, latent.size];
    const cfg = guidance > 1;
    const texts = cfg ? [negative, prompt] : [prompt];
    const hidden = concat(texts.map((t) => t.hidden)), mask = concat(texts.map((t) => t.mask));
    const batch = texts.length;
    const refs = concat(Array(batch).fill(ref));
    const [tokens, width] = prompt.hiddenShape;
    return async (x, sigma) => {
      const timestep = new Float32Array(batch).fill(f32(sigma * this.config.timestep_scale));
      const both = await this.run(
        "transformer",
        [concat(Array(batch).fill(x)), dims(batch)],
        [hidden, [batch, tokens, width]],
        [timestep, [batch]],
        [mask, [batch, tokens]],
        [refs, dims(batch)],
      );
      if (!cfg) return both;
      const out = new Float32Array(n), g = f32(guidance);  // uncond + guidance * (cond - uncond)
      for (let i = 0; i < n; i++) out[i] = f32(both[i] + f32(g * f32(both[n + i] - both[i])));
      return out;
    };
  }

  // photo: {width, height, rgb}; settings: {steps, guidance, seed}; progress(fraction, text)
  async edit(photo, settings, progress = () => {}) {
    const {config} = this, {pipeline, latent} = config;
    const R = pipeline.resolution;
    const stages = [];  // [name, ms] for the page's timing line
    let clock = performance.now();
    const lap = (name) => { const now = performance.now(); stages.push([name, now - clock]); clock = now; };
    let done = 0;
    const advance = (share, text) => { done += share; progress(done, text); };

    progress(0, "preparing the photo…");
    const {pixels, restore} = preprocess(photo, R, pipeline.padding);
    advance(SHARE.prepare, "encoding the photo…");
    await breathe();
    const ref = await this.run("vae_encoder", [pixels, [1, 3, R, R]]);
    lap("encode");
    advance(SHARE.encode, "denoising…");

    const prompt = this.conditioning[pipeline.prompt], negative = this.conditioning[pipeline.negative_prompt];
    const velocity = this.velocityFunction(prompt, negative, ref, settings.guidance);
    const sigmas = config.sigmas[settings.steps];
    if (!sigmas) throw new Error(`${settings.steps} steps: this page offers 1 to ${config.limits.max_steps}`);
    const generator = new Generator(settings.seed);
    let latents = generator.randn([1, latent.channels, latent.size, latent.size]);
    // (a hook: a partial edit, pipeline.py's `strength`, or a mask would start from the photo's latents here)
    const sample = SAMPLERS[pipeline.sampler];
    latents = await sample(velocity, latents, sigmas, async (step, total) => {
      advance(SHARE.denoise / total, `denoising: step ${step} of ${total}`);
      await breathe();
    }, generator);
    if (!latents.every(Number.isFinite)) throw new Error("the transformer produced NaN/inf latents");
    lap("denoise");

    const decoded = await this.run("vae_decoder", [latents, [1, latent.channels, latent.size, latent.size]]);
    lap("decode");
    advance(SHARE.decode, "back to the photo's size…");
    await breathe();
    const result = await this.restore(decoded, restore, photo, pipeline.upsample, advance);
    lap("upsample");
    progress(1, "done");
    return {image: result, stages};
  }

  // image/upsample.py's restore_photo: the padding cropped, then the photo's own size (guided, then the refiner)
  async restore(decoded, restore, photo, method, advance) {
    const {upsample: settings, pipeline} = this.config;
    const edit = postprocess(decoded, pipeline.resolution, restore.box);
    const useRefiner = method === "refine" && photo.width * photo.height <= settings.refine_max_pixels;
    const guided = upsample(edit, photo, method === "refine" ? "guided" : method, settings);
    advance(SHARE.upsample + (useRefiner ? 0 : SHARE.refine), useRefiner ? "refining…" : "done");
    if (!useRefiner) return guided;
    const refiner = this.config.graphs.refiner;
    const forward = (photoTile, editTile, h, w) => this.run("refiner", [photoTile, [1, 3, h, w]], [editTile, [1, 3, h, w]]);
    return refineInTiles(forward, photo, guided, refiner.factor, refiner.margin, settings.tile, async (i, total) => {
      advance(SHARE.refine / total, `refining: tile ${i} of ${total}`);
      await breathe();
    });
  }
}

function concat(arrays) {
  const out = new Float32Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) { out.set(a, at); at += a.length; }
  return out;
}

// Let progress messages out between stages (the graphs and the filter run on this thread)
const breathe = () => new Promise((resolve) => setTimeout(resolve, 0));
