// The Python client's image path, in JavaScript: centre crop, then Pillow's resize, then normalisation.
//
// privsplit.data.transforms.resize_square calls Image.resize((S, S), BILINEAR, reducing_gap=2.0): Pillow first
// box-reduces by floor(scale / 2) (Reduce.c: 8-bit sums, rounded with a float multiplier) and then resamples
// with an antialiased triangle filter (Resample.c: 22-bit fixed-point coefficients, one horizontal and one
// vertical pass, each rounded to 8 bits). Both are ported integer-for-integer below, so the page feeds the
// extractor the same uint8 pixels as Python for the same decoded photo.

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x) {
  const r = Math.round(x);
  return (Math.abs(x % 1) === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** Centre square of side round(min(w, h) * crop), like _centre_crop: {x, y, side}. */
export function centreBox(w, h, crop) {
  const side = Math.max(1, roundHalfEven(Math.min(w, h) * crop));
  return { x: Math.floor((w - side) / 2), y: Math.floor((h - side) / 2), side };
}

/** RGBA ImageData region -> packed RGB Uint8Array (w * h * 3). */
export function cropRGB(rgba, width, box) {
  const out = new Uint8Array(box.side * box.side * 3);
  for (let y = 0; y < box.side; y++) {
    for (let x = 0; x < box.side; x++) {
      const i = ((box.y + y) * width + box.x + x) * 4, o = (y * box.side + x) * 3;
      out[o] = rgba[i]; out[o + 1] = rgba[i + 1]; out[o + 2] = rgba[i + 2];
    }
  }
  return out;
}

function multiplier(n) { // Reduce.c division_UINT32(n, 8), computed in float32 like the C code
  return Math.floor(Math.fround(Math.fround(2 ** 32) / Math.fround(256 * n)));
}

/** Image.reduce((fx, fy)): block means with Pillow's rounding; partial edge blocks average what they hold. */
export function reduce(src, w, h, fx, fy) {
  const ow = Math.ceil(w / fx), oh = Math.ceil(h / fy), out = new Uint8Array(ow * oh * 3);
  for (let oy = 0; oy < oh; oy++) {
    const y0 = oy * fy, y1 = Math.min(h, y0 + fy);
    for (let ox = 0; ox < ow; ox++) {
      const x0 = ox * fx, x1 = Math.min(w, x0 + fx), n = (x1 - x0) * (y1 - y0), m = multiplier(n);
      for (let c = 0; c < 3; c++) {
        let ss = Math.floor(n / 2);
        for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) ss += src[(y * w + x) * 3 + c];
        out[(oy * ow + ox) * 3 + c] = Math.floor((ss * m) / 2 ** 24);
      }
    }
  }
  return out;
}

const PRECISION_BITS = 22;

function coeffs(inSize, in0, in1, outSize) { // Resample.c precompute_coeffs + normalize_coeffs_8bpc, bilinear
  const f = Math.fround, scale = f(f(in1) - f(in0)) / outSize, filterscale = Math.max(1, scale);
  const support = 1.0 * filterscale, ss = 1.0 / filterscale, taps = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = f(in0) + (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = [];
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const d = Math.abs((x + xmin - center + 0.5) * ss), w = d < 1 ? 1 - d : 0;
      k.push(w); ww += w;
    }
    taps.push({ xmin, k: k.map((w) => Math.trunc(0.5 + (ww !== 0 ? w / ww : w) * (1 << PRECISION_BITS))) });
  }
  return taps;
}

function clip8(ss) { return Math.min(255, Math.max(0, ss >> PRECISION_BITS)); }

/** One pass along x (horizontal) or y (vertical) of packed RGB. */
function pass(src, w, h, taps, horizontal) {
  const ow = horizontal ? taps.length : w, oh = horizontal ? h : taps.length, out = new Uint8Array(ow * oh * 3);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const t = taps[horizontal ? x : y];
      for (let c = 0; c < 3; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < t.k.length; i++) {
          const sx = horizontal ? t.xmin + i : x, sy = horizontal ? y : t.xmin + i;
          ss += src[(sy * w + sx) * 3 + c] * t.k[i];
        }
        out[(y * ow + x) * 3 + c] = clip8(ss);
      }
    }
  }
  return out;
}

/** Image.resize((size, size), BILINEAR, reducing_gap=2.0) of a packed RGB square-or-not image. */
export function pilResize(src, w, h, size) {
  if (w === size && h === size) return src.slice();
  let box = [0, 0, w, h];
  const fx = Math.trunc(w / size / 2.0) || 1, fy = Math.trunc(h / size / 2.0) || 1;
  if (fx > 1 || fy > 1) {
    src = reduce(src, w, h, fx, fy);
    box = [0, 0, w / fx, h / fy];
    w = Math.ceil(w / fx); h = Math.ceil(h / fy);
  }
  const needH = size !== w || box[0] !== 0 || box[2] !== size;
  const needV = size !== h || box[1] !== 0 || box[3] !== size;
  if (needH) { src = pass(src, w, h, coeffs(w, box[0], box[2], size), true); w = size; }
  if (needV) { src = pass(src, w, h, coeffs(h, box[1], box[3], size), false); h = size; }
  return src;
}

/** uint8 RGB (H x W x 3) -> float32 N x 3 x H x W, (x / 255 - mean) / std in float32 like torch. */
export function normalise(rgb, size, mean, std) {
  const out = new Float32Array(3 * size * size), f = Math.fround;
  for (let c = 0; c < 3; c++) {
    const m = f(mean[c]), s = f(std[c]);
    for (let i = 0; i < size * size; i++) out[c * size * size + i] = f(f(f(rgb[i * 3 + c] / 255) - m) / s);
  }
  return out;
}
