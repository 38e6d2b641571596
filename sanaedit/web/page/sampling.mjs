// The samplers of sanaedit/core/sampling.py, step for step, on float32 latents (Float32Array). The noise levels are
// not computed here: config.json carries the model's schedule as Python's flow_sigmas made it, for every step count
// the page offers, so the two cannot drift. `velocity(x, sigma)` is async (a graph call) and returns float32 like x.
// NumPy's float32 arithmetic with Python floats (NEP 50: the float becomes float32 first) is Math.fround here.

const f32 = Math.fround;

// x + v * d, each float32 (euler: x = x + float32(velocity) * (sigma_next - sigma))
function step(x, v, d) {
  const out = new Float32Array(x.length), s = f32(d);
  for (let i = 0; i < x.length; i++) out[i] = f32(x[i] + f32(v[i] * s));
  return out;
}

async function euler(velocity, x, sigmas, onStep) {
  const total = sigmas.length - 1;
  for (let i = 0; i < total; i++) {
    if (sigmas[i + 1] !== sigmas[i]) x = step(x, await velocity(x, f32(sigmas[i])), sigmas[i + 1] - sigmas[i]);
    onStep(i + 1, total);
  }
  return x;
}

// x0 = x - sigma * v (the data prediction), float32
function predictClean(x, v, sigma) {
  const out = new Float32Array(x.length), s = f32(sigma);
  for (let i = 0; i < x.length; i++) out[i] = f32(x[i] - f32(s * v[i]));
  return out;
}

async function dpmSolver(velocity, x, sigmas, onStep) {
  const total = sigmas.length - 1;
  let previous = null;  // [x0, lambda] of the last model call
  for (let i = 0; i < total; i++) {
    const sigma = sigmas[i], next = sigmas[i + 1];
    if (next !== sigma) {
      const x0 = predictClean(x, await velocity(x, f32(sigma)), sigma);
      const lambda = sigma < 1 ? Math.log((1 - sigma) / sigma) : -Infinity;
      if (next === 0) {
        x = x0;
      } else {
        const h = Math.log((1 - next) / next) - lambda;
        const decay = (1 - next) * Math.expm1(-h);
        const ratio = f32(next / sigma), d = f32(decay);
        const out = new Float32Array(x.length);
        for (let j = 0; j < x.length; j++) out[j] = f32(f32(ratio * x[j]) - f32(d * x0[j]));
        if (previous !== null) {
          const r = f32((lambda - previous[1]) / h), half = f32(0.5 * decay), older = previous[0];
          for (let j = 0; j < x.length; j++) out[j] = f32(out[j] - f32(f32(half * f32(x0[j] - older[j])) / r));
        }
        x = out;
      }
      previous = [x0, lambda];
    }
    onStep(i + 1, total);
  }
  return x;
}

async function scm(velocity, x, sigmas, onStep, generator) {
  const total = sigmas.length - 1;
  for (let i = 0; i < total; i++) {
    const sigma = sigmas[i], next = sigmas[i + 1];
    x = predictClean(x, await velocity(x, f32(sigma)), sigma);
    if (next > 0) {  // re-noised to the next level with fresh noise from the same generator
      const noise = generator.randn([x.length]), keep = f32(1 - next), s = f32(next);
      const out = new Float32Array(x.length);
      for (let j = 0; j < x.length; j++) out[j] = f32(f32(keep * x[j]) + f32(s * noise[j]));
      x = out;
    }
    onStep(i + 1, total);
  }
  return x;
}

export const SAMPLERS = {euler, dpm: dpmSolver, scm};
