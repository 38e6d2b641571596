// Pillow's Image.resize(size, Image.Resampling.BILINEAR) for 8-bit RGB, as sanaedit/image/io.py calls it: the same
// pixels, so the model sees in the browser what it sees in Python. A port of Pillow's Resample.c (precompute_coeffs,
// normalize_coeffs_8bpc, the two 8-bit passes in the order Pillow 13 picks); by hand because a canvas's drawImage
// filters differently. tests/web/test_page_math.py checks it against the installed Pillow.
// An image here is {width, height, rgb: Uint8Array of width * height * 3}.

const PRECISION_BITS = 32 - 8 - 2;

function bilinear(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

// For each output position: the first input index, the number of inputs and their fixed-point weights.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale;  // the bilinear filter's support (1) times the scale
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const count = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let total = 0;
    for (let x = 0; x < count; x++) {
      k[x] = bilinear((x + xmin - center + 0.5) * ss);
      total += k[x];
    }
    for (let x = 0; x < count; x++) {
      const w = total !== 0 ? k[x] / total : k[x];
      weights[xx * ksize + x] = Math.trunc(w < 0 ? w * (1 << PRECISION_BITS) - 0.5 : w * (1 << PRECISION_BITS) + 0.5);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = count;
  }
  return {bounds, weights, ksize};
}

// Pillow's clip8: the fixed-point sum's integer part, clipped to 0..255
function clip8(sum) {
  const v = Math.floor(sum / (1 << PRECISION_BITS));
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

// One pass along x (step 3: the pixels of a row) or along y (step 3 * width: the rows).
function pass(src, lines, inSize, outSize, lineStride, step, outLineStride, outStep) {
  const {bounds, weights, ksize} = coefficients(inSize, outSize);
  const out = new Uint8Array(lines * outSize * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let line = 0; line < lines; line++) {
    for (let o = 0; o < outSize; o++) {
      const first = bounds[o * 2], count = bounds[o * 2 + 1];
      for (let c = 0; c < 3; c++) {
        let sum = half;
        let at = line * lineStride + first * step + c;
        for (let i = 0; i < count; i++, at += step) sum += src[at] * weights[o * ksize + i];
        out[line * outLineStride + o * outStep + c] = clip8(sum);
      }
    }
  }
  return out;
}

export function resizeBilinear(image, width, height) {
  let {rgb, width: w, height: h} = image;
  if (w === width && h === height) return {width, height, rgb: rgb.slice()};
  // horizontal: each row, pixels 3 bytes apart; vertical: each column, rows w * 3 bytes apart
  const horizontal = () => { rgb = pass(rgb, h, w, width, w * 3, 3, width * 3, 3); w = width; };
  const vertical = () => { rgb = pass(rgb, w, h, height, 3, w * 3, 3, w * 3); h = height; };
  // Pillow runs the vertical pass first when the height shrinks more than twice as much as the width (the
  // intermediate image is rounded to 8 bits, so the order shows in the pixels)
  const verticalFirst = image.height - height > 0 && image.height - height > (image.width - width) * 2;
  for (const run of verticalFirst ? [vertical, horizontal] : [horizontal, vertical]) {
    if ((run === horizontal ? w !== width : h !== height)) run();
  }
  return {width, height, rgb};
}
