// Bringing the edit back to the photo's own size, as sanaedit/image/upsample.py does (read it for the method): the
// fast guided filter, the photo as the guide. float64 where the Python computes in float64 (JS numbers), float32
// (Math.fround, one operation at a time) where it computes in float32. By hand for the same reason as the Python:
// it must be the same arithmetic as the CLI's, and no browser library has it.
// An image here is {width, height, rgb: Uint8Array of width * height * 3}.

import {resizeBilinear} from "./resize.mjs";

const f32 = Math.fround;
const LUMA = [0.299, 0.587, 0.114];

// PIL RGB -> planes [C][h * w] of float64 in [0, 1] (C = 1 for luminance)
function planes(image, grey) {
  const n = image.width * image.height;
  const rgb = [0, 1, 2].map((c) => {
    const p = new Float64Array(n);
    for (let i = 0; i < n; i++) p[i] = image.rgb[i * 3 + c] / 255;
    return p;
  });
  if (!grey) return rgb;
  const luma = new Float64Array(n);
  for (let i = 0; i < n; i++) luma[i] = LUMA[0] * rgb[0][i] + LUMA[1] * rgb[1][i] + LUMA[2] * rgb[2][i];
  return [luma];
}

// Mean over a (2r+1)^2 window cut at the border: running sums down the columns, then along the rows (upsample.py's
// _box, the same additions in the same order).
function box(plane, h, w, radius) {
  const once = (src, rows, cols) => {  // along the rows axis of a rows x cols plane, result transposed
    const sums = new Float64Array((rows + 1) * cols);
    for (let i = 0; i < rows; i++) {
      for (let j = 0; j < cols; j++) sums[(i + 1) * cols + j] = sums[i * cols + j] + src[i * cols + j];
    }
    const out = new Float64Array(rows * cols);
    for (let i = 0; i < rows; i++) {
      const lo = Math.max(i - radius, 0), hi = Math.min(i + radius + 1, rows);
      for (let j = 0; j < cols; j++) out[j * rows + i] = (sums[hi * cols + j] - sums[lo * cols + j]) / (hi - lo);
    }
    return out;
  };
  return once(once(plane, h, w), w, h);
}

const times = (a, b) => a.map((v, i) => v * b[i]);

// Solve A x = b for one pixel's K x K system (LU with partial pivoting, as LAPACK's gesv): A and B row-major, B K x C.
function solve(A, B, k, c) {
  const a = A.slice(), x = B.slice();
  for (let col = 0; col < k; col++) {
    let pivot = col;
    for (let r = col + 1; r < k; r++) if (Math.abs(a[r * k + col]) > Math.abs(a[pivot * k + col])) pivot = r;
    if (pivot !== col) {
      for (let j = 0; j < k; j++) [a[col * k + j], a[pivot * k + j]] = [a[pivot * k + j], a[col * k + j]];
      for (let j = 0; j < c; j++) [x[col * c + j], x[pivot * c + j]] = [x[pivot * c + j], x[col * c + j]];
    }
    const inverse = 1 / a[col * k + col];
    for (let r = col + 1; r < k; r++) {
      const factor = a[r * k + col] * inverse;
      for (let j = col + 1; j < k; j++) a[r * k + j] -= factor * a[col * k + j];
      for (let j = 0; j < c; j++) x[r * c + j] -= factor * x[col * c + j];
    }
  }
  for (let row = k - 1; row >= 0; row--) {
    for (let j = 0; j < c; j++) {
      let v = x[row * c + j];
      for (let i = row + 1; i < k; i++) v -= a[row * k + i] * x[i * c + j];
      x[row * c + j] = v / a[row * k + row];
    }
  }
  return x;
}

// Per-pixel ridge regression edit ~ A guide + b over each window, averaged over windows: [K + 1][C] planes of
// float32 (K rows of A, then b), upsample.py's _affine_maps.
function affineMaps(guide, edit, h, w, radius, eps) {
  radius = Math.max(1, Math.min(radius, Math.floor((Math.min(h, w) - 1) / 2)));
  const k = guide.length, c = edit.length, n = h * w;
  const meanI = guide.map((p) => box(p, h, w, radius));
  const meanP = edit.map((p) => box(p, h, w, radius));
  const covII = [], covIP = [];
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) {
      const m = box(times(guide[i], guide[j]), h, w, radius);
      covII.push(m.map((v, p) => v - meanI[i][p] * meanI[j][p] + (i === j ? eps : 0)));
    }
    for (let j = 0; j < c; j++) {
      const m = box(times(guide[i], edit[j]), h, w, radius);
      covIP.push(m.map((v, p) => v - meanI[i][p] * meanP[j][p]));
    }
  }
  const a = Array.from({length: k * c}, () => new Float64Array(n));
  const b = Array.from({length: c}, () => new Float64Array(n));
  const A = new Float64Array(k * k), B = new Float64Array(k * c);
  for (let p = 0; p < n; p++) {
    for (let i = 0; i < k * k; i++) A[i] = covII[i][p];
    for (let i = 0; i < k * c; i++) B[i] = covIP[i][p];
    const x = solve(A, B, k, c);
    for (let i = 0; i < k * c; i++) a[i][p] = x[i];
    for (let j = 0; j < c; j++) {
      let s = a[j][p] * meanI[0][p];
      for (let i = 1; i < k; i++) s += a[i * c + j][p] * meanI[i][p];
      b[j][p] = meanP[j][p] - s;
    }
  }
  return [...a, ...b].map((plane) => Float32Array.from(box(plane, h, w, radius)));
}

// Bilinear (half-pixel centres) source indices and float32 weights along one axis (upsample.py's _interp_weights)
function interpWeights(nOut, nIn) {
  const i0 = new Int32Array(nOut), i1 = new Int32Array(nOut), weight = new Float32Array(nOut);
  for (let o = 0; o < nOut; o++) {
    const src = Math.min(Math.max((o + 0.5) * (nIn / nOut) - 0.5, 0), nIn - 1);
    i0[o] = Math.floor(src);
    i1[o] = Math.min(i0[o] + 1, nIn - 1);
    weight[o] = src - i0[o];
  }
  return {i0, i1, weight};
}

// The maps upsampled bilinearly to the photo's size and applied to it (upsample.py's _apply): each output row
// interpolates two map rows, each already interpolated along x (kept while consecutive output rows share them).
function apply(maps, k, c, h, w, photo, grey) {
  const {width, height} = photo;
  const cols = interpWeights(width, w), rows = interpWeights(height, h);
  const out = new Uint8Array(width * height * 3);
  const cache = new Map();
  const mapRow = (r) => {  // every map plane's row r, interpolated along x to the photo's width
    if (!cache.has(r)) {
      if (cache.size > 2) cache.delete(cache.keys().next().value);
      const row = maps.map((m) => {
        const line = new Float32Array(width);
        for (let x = 0; x < width; x++) {
          const wc = cols.weight[x];
          line[x] = f32(f32(m[r * w + cols.i0[x]] * f32(1 - wc)) + f32(m[r * w + cols.i1[x]] * wc));
        }
        return line;
      });
      cache.set(r, row);
    }
    return cache.get(r);
  };
  const guide = new Float32Array(3);
  for (let y = 0; y < height; y++) {
    const top = mapRow(rows.i0[y]), bottom = mapRow(rows.i1[y]);
    const wr = rows.weight[y], keep = f32(1 - wr);
    for (let x = 0; x < width; x++) {
      const at = (y * width + x) * 3;
      for (let i = 0; i < 3; i++) guide[i] = f32(photo.rgb[at + i] / 255);
      if (grey) guide[0] = f32(f32(f32(guide[0] * f32(LUMA[0])) + f32(guide[1] * f32(LUMA[1]))) + f32(guide[2] * f32(LUMA[2])));
      for (let ch = 0; ch < c; ch++) {
        const plane = (index) => f32(f32(top[index][x] * keep) + f32(bottom[index][x] * wr));
        let result = plane((k - 1) * c + ch);  // b
        for (let a = 0; a < k - 1; a++) result = f32(result + f32(plane(a * c + ch) * guide[a]));
        const v = f32(f32(result * 255) + 0.5);
        out[at + ch] = v <= 0 ? 0 : v >= 255 ? 255 : Math.trunc(v);
      }
    }
  }
  return {width, height, rgb: out};
}

// upsample.py's upsample(edit, photo, method): "plain" (bilinear), "guided" or "guided-grey".
export function upsample(edit, photo, method, settings) {
  if (method === "plain" || (edit.width === photo.width && edit.height === photo.height)) {
    return resizeBilinear(edit, photo.width, photo.height);
  }
  if (Math.min(edit.width, edit.height) < 2) return resizeBilinear(edit, photo.width, photo.height);
  const grey = method === "guided-grey";
  const guideLow = resizeBilinear(photo, edit.width, edit.height);  // what the model saw, at the edit's size
  const h = edit.height, w = edit.width;
  const guide = planes(guideLow, grey);
  const maps = affineMaps(guide, planes(edit, false), h, w, settings.radius, settings.eps);
  return apply(maps, guide.length + 1, 3, h, w, photo, grey);
}
