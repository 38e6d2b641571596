// torch.randn's numbers on the CPU for a seed, in the browser: a port of sanaedit/core/noise.py (read it for why and
// how). A seed gives the same starting latent here as `sanaedit edit --seed N`, so the same picture.
// Written by hand: no JS library reproduces torch's Mersenne Twister + AVX2 Box-Muller; float32 arithmetic is
// Math.fround on doubles, exact for one +, -, *, / or sqrt of float32 values (double has more than 2 x 24 + 2 bits).
// tests/web/test_page_math.py checks it against the Python bit for bit.

const f32 = Math.fround;
const scratch = new DataView(new ArrayBuffer(4));
const bitsOf = (x) => { scratch.setFloat32(0, x); return scratch.getUint32(0); };
const floatOf = (bits) => { scratch.setUint32(0, bits >>> 0); return scratch.getFloat32(0); };

// avx_mathfun.h's constants, rounded to float32 (noise.py's _LOG_P ... _FOPI)
const MIN_NORM_POS = floatOf(0x00800000);
const SQRTHF = f32(0.707106781186547524);
const LOG_P = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
  -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1].map(f32);
const LOG_Q1 = f32(-2.12194440e-4), LOG_Q2 = f32(0.693359375);
const DP1 = f32(-0.78515625), DP2 = f32(-2.4187564849853515625e-4), DP3 = f32(-3.77489497744594108e-8);
const SINCOF = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1].map(f32);
const COSCOF = [2.443315711809948e-005, -1.388731625493765e-003, 4.166664568298827e-002].map(f32);
const FOPI = f32(1.27323954473516);
const TWO_PI_F32 = f32(2 * Math.PI);

// float32 fused multiply-add: the float32 product is exact in a double, so only the add rounds (noise.py's _fma)
const fma = (a, b, c) => f32(a * b + c);

function logAvx2(x) {
  const bits = bitsOf(Math.max(x, MIN_NORM_POS));
  let e = f32(f32((bits >>> 23) - 0x7f) + 1);
  x = floatOf((bits & 0x807fffff) | 0x3f000000);
  const below = x < SQRTHF ? 1 : 0;
  const tmp = f32(x * below);
  x = f32(x - 1);
  e = f32(e - below);
  x = f32(x + tmp);
  const z = f32(x * x);
  let y = fma(LOG_P[0], x, LOG_P[1]);
  for (let i = 2; i < LOG_P.length; i++) y = fma(y, x, LOG_P[i]);
  y = fma(f32(y * x), z, f32(e * LOG_Q1));
  y = f32(y - f32(z * 0.5));
  x = f32(x + y);
  return fma(e, LOG_Q2, x);
}

function sincosAvx2(x) {  // x >= 0
  const j = (Math.trunc(f32(x * FOPI)) + 1) & ~1;
  const y = f32(j);
  const signSin = ((j & 4) << 29) >>> 0;
  const signCos = ((~(j - 2) & 4) << 29) >>> 0;
  const sinPoly = (j & 2) === 0;
  x = fma(y, DP1, x);
  x = fma(y, DP2, x);
  x = fma(y, DP3, x);
  const z = f32(x * x);
  let yc = fma(COSCOF[0], z, COSCOF[1]);
  yc = fma(yc, z, COSCOF[2]);
  yc = fma(z, f32(z * yc), -f32(z * 0.5));
  yc = f32(yc + 1);
  let ys = fma(SINCOF[0], z, SINCOF[1]);
  ys = fma(ys, z, SINCOF[2]);
  ys = fma(x, f32(z * ys), x);
  const sin = floatOf(bitsOf(sinPoly ? ys : yc) ^ signSin);
  const cos = floatOf(bitsOf(sinPoly ? yc : ys) ^ signCos);
  return [sin, cos];
}

// NormalFill16 of torch's AVX2 build: 16 uniforms at u[from..from+16) -> 16 normals at out[to..to+16)
function boxMuller16(u, from, out, to) {
  for (let i = 0; i < 8; i++) {
    const radius = f32(Math.sqrt(f32(-2 * logAvx2(f32(1 - u[from + i])))));
    const [sin, cos] = sincosAvx2(f32(TWO_PI_F32 * u[from + 8 + i]));
    out[to + i] = f32(radius * cos) + 0;  // + 0: -0 becomes +0, as torch's fma(n, 1, 0)
    out[to + 8 + i] = f32(radius * sin) + 0;
  }
}

// The 32-bit Mersenne Twister (MT19937) as torch seeds it: init_genrand(seed & 0xffffffff)
class MersenneTwister {
  constructor(seed32) {
    this.mt = new Uint32Array(624);
    this.mt[0] = seed32 >>> 0;
    for (let i = 1; i < 624; i++) {
      const prev = this.mt[i - 1] ^ (this.mt[i - 1] >>> 30);
      this.mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.index = 624;
  }

  next() {
    if (this.index >= 624) this.twist();
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  twist() {
    const mt = this.mt;
    for (let i = 0; i < 624; i++) {
      const y = (mt[i] & 0x80000000) | (mt[(i + 1) % 624] & 0x7fffffff);
      mt[i] = mt[(i + 397) % 624] ^ (y >>> 1) ^ (y & 1 ? 0x9908b0df : 0);
    }
    this.index = 0;
  }
}

export const MAX_SEED = 2n ** 63n - 1n;  // the CLI's and the server's

// What torch.Generator().manual_seed(seed) then torch.randn(shape, generator=g) draw, one call after another.
export class Generator {
  constructor(seed) {
    const big = BigInt(seed);
    if (big < 0n || big > MAX_SEED) throw new RangeError(`seed ${seed} is outside 0..2**63-1`);
    this.twister = new MersenneTwister(Number(big & 0xffffffffn));
    this.nextNormal = null;  // torch's cached second value of the small-tensor double Box-Muller
  }

  randn(shape) {
    const size = shape.reduce((a, b) => a * b, 1);
    if (size < 16) return this.randnSmall(size);
    const extra = size % 16 ? 16 : 0;
    const uniform = new Float32Array(size + extra);
    for (let i = 0; i < uniform.length; i++) uniform[i] = (this.twister.next() & 0xffffff) * 2 ** -24;
    const out = new Float32Array(size);
    for (let b = 0; b + 16 <= size; b += 16) boxMuller16(uniform, b, out, b);
    if (extra) boxMuller16(uniform, size, out, size - 16);  // the last 16 redone from 16 fresh uniforms
    return out;
  }

  uniform53() {  // at::uniform_real_distribution<double>(0, 1): 53 bits of one random64()
    const hi = this.twister.next(), lo = this.twister.next();
    return ((hi & 0x1fffff) * 2 ** 32 + lo) * 2 ** -53;
  }

  randnSmall(size) {  // at::normal_distribution<double>: torch's path under 16 elements
    const out = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      if (this.nextNormal !== null) {
        out[i] = this.nextNormal;
        this.nextNormal = null;
      } else {
        const u1 = this.uniform53(), u2 = this.uniform53();
        const radius = Math.sqrt(-2 * Math.log1p(-u2));
        const theta = 2 * Math.PI * u1;
        this.nextNormal = radius * Math.sin(theta);
        out[i] = radius * Math.cos(theta);
      }
    }
    return out;
  }
}
