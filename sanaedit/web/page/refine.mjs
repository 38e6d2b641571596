// The learned refiner over the guided edit at the photo's own size, tile by tile (sanaedit/models/refine_tiles.py:
// the same tiles, margins and rounding), so the working memory stays a few tiles whatever the photo's size.
// `forward(photo, edit, h, w)` runs the graph on two float32 [1, 3, h, w] tiles in [0, 1] and returns the refined one.
// An image here is {width, height, rgb: Uint8Array of width * height * 3}.

const f32 = Math.fround;

// The picture padded by replication to whole factor x factor blocks (np.pad's "edge")
function padEdge(image, rows, cols) {
  const out = new Uint8Array(rows * cols * 3);
  for (let y = 0; y < rows; y++) {
    const sy = Math.min(y, image.height - 1);
    for (let x = 0; x < cols; x++) {
      const from = (sy * image.width + Math.min(x, image.width - 1)) * 3, to = (y * cols + x) * 3;
      out[to] = image.rgb[from]; out[to + 1] = image.rgb[from + 1]; out[to + 2] = image.rgb[from + 2];
    }
  }
  return out;
}

// uint8 [h, w, 3] crop -> float32 planar [3, h, w] in [0, 1] (refine_tiles.to_floats)
function toFloats(rgb, cols, y0, y1, x0, x1) {
  const h = y1 - y0, w = x1 - x0, out = new Float32Array(3 * h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const at = ((y + y0) * cols + x + x0) * 3;
      for (let c = 0; c < 3; c++) out[c * h * w + y * w + x] = f32(rgb[at + c] / 255);
    }
  }
  return out;
}

export async function refineInTiles(forward, photo, edit, factor, margin, tile, onTile) {
  const f = factor, m = margin;
  tile = Math.max(f, tile - (tile % f));
  const {width, height} = photo;
  const rows = height + ((f - (height % f)) % f), cols = width + ((f - (width % f)) % f);
  const photoPadded = padEdge(photo, rows, cols), editPadded = padEdge(edit, rows, cols);
  const out = new Uint8Array(width * height * 3);
  const total = Math.ceil(height / tile) * Math.ceil(width / tile);
  let done = 0;
  for (let y = 0; y < height; y += tile) {
    for (let x = 0; x < width; x += tile) {
      const y0 = Math.max(0, y - m), x0 = Math.max(0, x - m);
      const y1 = Math.min(rows, y + tile + m), x1 = Math.min(cols, x + tile + m);
      const h = y1 - y0, w = x1 - x0;
      const piece = await forward(toFloats(photoPadded, cols, y0, y1, x0, x1), toFloats(editPadded, cols, y0, y1, x0, x1), h, w);
      const keepH = Math.min(tile, height - y), keepW = Math.min(tile, width - x);
      for (let yy = 0; yy < keepH; yy++) {
        for (let xx = 0; xx < keepW; xx++) {
          const from = (yy + y - y0) * w + xx + x - x0, to = ((y + yy) * width + x + xx) * 3;
          for (let c = 0; c < 3; c++) {  // refine_tiles.to_uint8: clipped to [0, 1], nearest level
            const v = Math.min(1, Math.max(0, piece[c * h * w + from]));
            out[to + c] = Math.trunc(f32(f32(v * 255) + 0.5));
          }
        }
      }
      onTile?.(++done, total);
    }
  }
  return {width, height, rgb: out};
}
