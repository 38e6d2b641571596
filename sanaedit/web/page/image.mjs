// The photo's path into and out of the model, as sanaedit/image/io.py has it: decode (EXIF orientation, colour
// profile to sRGB, transparency over white: the browser's decoder), `preprocess` (resize so the longer side is the
// model's resolution, pad to a centred square: black or reflect, [-1, 1]) and `postprocess` (back to 8 bits, the
// padding cropped). Float32 arithmetic is Math.fround, one operation at a time, as NumPy does it.
// An image here is {width, height, rgb: Uint8Array of width * height * 3}.

import {resizeBilinear} from "./resize.mjs";

const f32 = Math.fround;

export class PhotoError extends Error {}

// Python's round(): halves to even (the inner box's size, a float64 quotient)
function roundHalfEven(x) {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// The file the visitor picked, upright RGB over white, or a PhotoError in one line (image/io.py's limits).
export async function decodePhoto(file, limits) {
  const name = file.name || "photo";
  if (!file.size) throw new PhotoError(`${name}: empty file (0 bytes)`);
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {imageOrientation: "from-image", premultiplyAlpha: "none"});
  } catch (err) {
    throw new PhotoError(`${name}: not an image this browser can decode (a JPEG, PNG or WebP photo is)`);
  }
  const {width, height} = bitmap;
  try {
    checkSize(name, width, height, limits);
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", {willReadFrequently: true});
    context.fillStyle = "#fff";  // transparency over white, as image/pixels.py's to_rgb
    context.fillRect(0, 0, width, height);
    context.drawImage(bitmap, 0, 0);
    return fromRgba(context.getImageData(0, 0, width, height).data, width, height);
  } finally {
    bitmap.close();
  }
}

export function checkSize(name, width, height, limits) {
  if (width * height > limits.max_pixels) {
    throw new PhotoError(`${name}: ${width}x${height} pixels is over the limit of ${limits.max_pixels.toLocaleString("en")}; downscale it first`);
  }
  const long = Math.max(width, height), short = Math.min(width, height);
  if (long > limits.max_aspect * short) {
    throw new PhotoError(`${name}: ${width}x${height} pixels is a strip (aspect ratio ${Math.round(long / short)}:1, the limit is ${limits.max_aspect}:1); crop it first`);
  }
}

export function fromRgba(rgba, width, height) {
  const rgb = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgb[i] = rgba[j]; rgb[i + 1] = rgba[j + 1]; rgb[i + 2] = rgba[j + 2];
  }
  return {width, height, rgb};
}

export function toRgba(image) {
  const rgba = new Uint8ClampedArray(image.width * image.height * 4);
  for (let i = 0, j = 0; i < image.rgb.length; i += 3, j += 4) {
    rgba[j] = image.rgb[i]; rgba[j + 1] = image.rgb[i + 1]; rgba[j + 2] = image.rgb[i + 2]; rgba[j + 3] = 255;
  }
  return rgba;
}

// np.pad's "reflect" for any pad width: the picture mirrored at its edges without repeating them, periodically
function reflect(i, n) {
  if (n === 1) return 0;
  const period = 2 * (n - 1);
  i = ((i % period) + period) % period;
  return i >= n ? period - i : i;
}

// image/io.py's preprocess: [3, R, R] float32 in [-1, 1] (planar, the graphs' [1, 3, R, R]) and how to undo it.
export function preprocess(image, resolution, padding) {
  const {width, height} = image;
  const side = Math.max(width, height);
  const left = Math.floor((side - width) / 2), top = Math.floor((side - height) / 2);
  const innerW = Math.max(1, roundHalfEven((width * resolution) / side));
  const innerH = Math.max(1, roundHalfEven((height * resolution) / side));
  const x0 = Math.floor((resolution - innerW) / 2), y0 = Math.floor((resolution - innerH) / 2);
  const inner = resizeBilinear(image, innerW, innerH);
  const plane = resolution * resolution;
  const pixels = new Float32Array(3 * plane);  // black padding: 0 -> -1
  for (let y = 0; y < resolution; y++) {
    for (let x = 0; x < resolution; x++) {
      let sx = x - x0, sy = y - y0;
      const outside = sx < 0 || sy < 0 || sx >= innerW || sy >= innerH;
      if (outside && padding !== "reflect") {
        for (let c = 0; c < 3; c++) pixels[c * plane + y * resolution + x] = -1;
        continue;
      }
      if (outside) { sx = reflect(sx, innerW); sy = reflect(sy, innerH); }
      const at = (sy * innerW + sx) * 3;
      for (let c = 0; c < 3; c++) pixels[c * plane + y * resolution + x] = f32(f32(f32(inner.rgb[at + c] / 255) * 2) - 1);
    }
  }
  const restore = {width, height, left, top, side, box: [x0, y0, x0 + innerW, y0 + innerH], resolution};
  return {pixels, restore};
}

// image/io.py's postprocess: the decoder's [3, R, R] in [-1, 1] -> 8-bit RGB (np.round: halves to even), the
// padding cropped to the box the photo was resized into.
export function postprocess(pixels, resolution, box) {
  const [x0, y0, x1, y1] = box;
  const width = x1 - x0, height = y1 - y0, plane = resolution * resolution;
  const rgb = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        const v = f32(f32(pixels[c * plane + (y + y0) * resolution + x + x0] * 0.5) + 0.5);
        rgb[(y * width + x) * 3 + c] = roundHalfEven(f32(Math.min(1, Math.max(0, v)) * 255));
      }
    }
  }
  return {width, height, rgb};
}
