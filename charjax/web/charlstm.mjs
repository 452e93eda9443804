// charjax's stacked LSTM in plain JavaScript: the same math as charjax/cells.py (Keras layout,
// gates i, f, c, o; cells lstm, lnlstm and mogrifier) for sampling statefully from an exported
// model. No dependencies: a web page embeds this file as it is, and Node imports it
// (tests/test_export.py).

/** Float32Array of a tensor {shape, dtype: "float32", data: base64 little-endian}. */
export function decodeTensor(tensor) {
  const bytes = typeof Buffer !== "undefined"
    ? Uint8Array.from(Buffer.from(tensor.data, "base64"))
    : Uint8Array.from(atob(tensor.data), (ch) => ch.charCodeAt(0));
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const size = tensor.shape.reduce((a, b) => a * b, 1);
  if (values.length !== size) throw new Error(`tensor of shape ${tensor.shape} has ${values.length} values`);
  return values;
}

/** A model from charjax-export's JSON: {vocab, cell, layers: [{kernel, recurrent_kernel, bias,
 * and the cell's own tensors}], dense}. */
export function loadModel(exported) {
  const layers = exported.layers.map((layer) => {
    const tensors = {};
    for (const [name, tensor] of Object.entries(layer)) tensors[name] = decodeTensor(tensor);
    return {
      ...tensors,
      recurrent: tensors.recurrent_kernel, // [H, 4H]; kernel [inputs, 4H], bias [4H]
      inputs: layer.kernel.shape[0],
      hidden: layer.recurrent_kernel.shape[0],
      shapes: Object.fromEntries(Object.entries(layer).map(([n, t]) => [n, t.shape])),
    };
  });
  const dense = {
    kernel: decodeTensor(exported.dense.kernel), // [H, V]
    bias: decodeTensor(exported.dense.bias), // [V]
  };
  const chars = Array.from(exported.vocab);
  const index = new Map(chars.map((ch, i) => [ch, i]));
  if (!FORMATS.includes(exported.format)) throw new Error(`unknown format ${exported.format}`);
  const cell = exported.cell || "lstm";
  if (!Object.hasOwn(CELLS, cell)) throw new Error(`unknown cell ${cell}: this reads ${Object.keys(CELLS)}`);
  return { layers, dense, chars, index, cell, lower: exported.recipe.lower !== false };
}

const sigmoid = (x) => 1 / (1 + Math.exp(-x));
// 1: LSTM layers; 2: the layers of the cell named by `cell`
const FORMATS = ["charjax-export/1", "charjax-export/2"];

/** The zero state: per layer {h, c}, Float32Array[H] each. */
export function zeroState(model) {
  return model.layers.map((l) => ({ h: new Float32Array(l.hidden), c: new Float32Array(l.hidden) }));
}

/** x [n] @ matrix [n, m] (row-major, starting at `offset`) added to out [m]. */
function addProduct(out, x, matrix, offset = 0) {
  const m = out.length;
  for (let k = 0; k < x.length; k++) {
    const xk = x[k];
    if (xk === 0) continue;
    const row = offset + k * m;
    for (let j = 0; j < m; j++) out[j] += xk * matrix[row + j];
  }
  return out;
}

/** x [n] @ matrix [n, m] -> a new Float64Array[m]. */
const product = (x, matrix, m, offset = 0) => addProduct(new Float64Array(m), x, matrix, offset);

/** The layer's input projection x @ kernel [4H] (no bias): a kernel row for a char id. */
function projectInput(layer, x) {
  const G = 4 * layer.hidden;
  if (typeof x === "number") return Float64Array.from(layer.kernel.subarray(x * G, (x + 1) * G));
  return product(x, layer.kernel, G);
}

/** Zero mean, unit variance over v (layer normalisation without gain; eps as charjax's). */
function normalise(v) {
  const mean = v.reduce((a, b) => a + b, 0) / v.length;
  const variance = v.reduce((a, b) => a + (b - mean) ** 2, 0) / v.length;
  const scale = 1 / Math.sqrt(variance + 1e-5);
  return v.map((x) => (x - mean) * scale);
}

/** Each gate's H values of z [4H] normalised separately, times gain [4H]. */
function gateNorm(z, gain) {
  const H = z.length / 4, out = new Float64Array(z.length);
  for (let q = 0; q < 4; q++) {
    const part = normalise(z.slice(q * H, (q + 1) * H));
    for (let k = 0; k < H; k++) out[q * H + k] = part[k] * gain[q * H + k];
  }
  return out;
}

/** The LSTM update of {h, c} in place from pre-activations z [4H]; `norm` is applied to c
 * before its tanh (lnlstm). */
function update(state, z, norm = (c) => c) {
  const { h, c } = state, H = h.length;
  for (let k = 0; k < H; k++) {
    const i = sigmoid(z[k]), f = sigmoid(z[H + k]), g = Math.tanh(z[2 * H + k]);
    c[k] = f * c[k] + i * g;
  }
  const shown = norm(c);
  for (let k = 0; k < H; k++) h[k] = sigmoid(z[3 * H + k]) * Math.tanh(shown[k]);
}

/** A mogrifier round's matrix (`name` q or r, round k): x [n] -> x @ M [m], full or low-rank. */
function gateProduct(layer, name, k, x, m) {
  const full = layer[`mogrify_${name}`];
  if (full) return product(x, full, m, k * x.length * m);
  const [, n, rank] = layer.shapes[`mogrify_${name}_left`];
  const thin = product(x, layer[`mogrify_${name}_left`], rank, k * n * rank);
  return product(thin, layer[`mogrify_${name}_right`], m, k * rank * m);
}

const count = (layer, name) => {
  const shape = layer.shapes[`mogrify_${name}`] || layer.shapes[`mogrify_${name}_left`];
  return shape ? shape[0] : 0;
};

// Each cell: (layer, state {h, c} updated in place, x: a char id or the layer below's h).
const CELLS = {
  lstm(layer, state, x) {
    const z = projectInput(layer, x);
    for (let j = 0; j < z.length; j++) z[j] += layer.bias[j];
    addProduct(z, state.h, layer.recurrent);
    update(state, z);
  },
  lnlstm(layer, state, x) {
    const G = 4 * layer.hidden;
    const input = gateNorm(projectInput(layer, x), layer.input_gain);
    const recurrent = gateNorm(product(state.h, layer.recurrent, G), layer.recurrent_gain);
    const z = input.map((v, j) => v + recurrent[j] + layer.bias[j]);
    update(state, z, (c) => normalise(c).map((v, k) => v * layer.cell_gain[k] + layer.cell_bias[k]));
  },
  mogrifier(layer, state, x) {
    const H = layer.hidden, F = layer.inputs, G = 4 * H;
    const rounds = count(layer, "q") + count(layer, "r");
    let h = Float64Array.from(state.h);
    // x as a vector: a char id is one-hot
    let input = typeof x === "number" ? new Float64Array(F).fill(0) : Float64Array.from(x);
    if (typeof x === "number") input[x] = 1;
    for (let r = 0; r < rounds; r++) {
      if (r % 2 === 0) {
        const gate = gateProduct(layer, "q", r >> 1, h, F);
        input = input.map((v, j) => v * 2 * sigmoid(gate[j]));
      } else {
        const gate = gateProduct(layer, "r", r >> 1, input, H);
        h = h.map((v, k) => v * 2 * sigmoid(gate[k]));
      }
    }
    const z = product(input, layer.kernel, G);
    for (let j = 0; j < G; j++) z[j] += layer.bias[j];
    addProduct(z, h, layer.recurrent);
    update(state, z);
  },
};

/** Read one char id: updates `state` in place, returns the logits (Float64Array[V]). */
export function step(model, state, id) {
  let below = id; // the first layer reads the id, each layer above the h below it
  model.layers.forEach((layer, n) => {
    CELLS[model.cell](layer, state[n], below);
    below = state[n].h;
  });
  const logits = Float64Array.from(model.dense.bias);
  return addProduct(logits, below, model.dense.kernel);
}

/** Softmax probabilities of logits. */
export function softmax(logits) {
  let max = -Infinity;
  for (const x of logits) max = Math.max(max, x);
  const p = logits.map((x) => Math.exp(x - max));
  const total = p.reduce((a, b) => a + b, 0);
  return p.map((x) => x / total);
}

/** Ids of `text` (lower-cased like the training text); unknown chars are skipped. */
export function encode(model, text) {
  const ids = [];
  for (const ch of model.lower ? text.toLowerCase() : text) {
    if (model.index.has(ch)) ids.push(model.index.get(ch));
  }
  return ids;
}

/** Logits after reading `ids` from `state` (the zero state's output logits if `ids` is empty). */
export function read(model, state, ids) {
  if (ids.length === 0) return step0(model);
  let logits = null;
  for (const id of ids) logits = step(model, state, id);
  return logits;
}

function step0(model) {
  // Nothing read yet: the top layer's h is zero, so the logits are the dense bias.
  return Float64Array.from(model.dense.bias);
}

/** One char id from logits: argmax at temperature 0, else a draw from softmax(logits / T)
 * restricted to the top-p nucleus (the likeliest chars up to mass p; the first always stays). */
export function pick(logits, temperature, topP = 1, random = Math.random) {
  let best = 0;
  for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;
  if (!(temperature > 0)) return best;
  const probs = softmax(logits.map((x) => (x - logits[best]) / temperature));
  let keep = probs.map((_, v) => v);
  if (topP < 1) {
    const order = keep.slice().sort((a, b) => probs[b] - probs[a]);
    let mass = 0;
    keep = [];
    for (const v of order) {
      if (mass >= topP) break;
      keep.push(v);
      mass += probs[v];
    }
  }
  const total = keep.reduce((a, v) => a + probs[v], 0);
  let r = random() * total;
  for (const v of keep) {
    r -= probs[v];
    if (r <= 0) return v;
  }
  return keep[keep.length - 1];
}

/** Generate `length` chars after `prime`, calling `onChar(ch)` for each; returns the text. */
export function generate(model, prime, { length, temperature = 0, topP = 1, random, onChar } = {}) {
  const state = zeroState(model);
  let logits = read(model, state, encode(model, prime));
  let out = "";
  for (let n = 0; n < length; n++) {
    const id = pick(logits, temperature, topP, random);
    out += model.chars[id];
    if (onChar) onChar(model.chars[id]);
    logits = step(model, state, id);
  }
  return out;
}

/** A seeded source of uniform numbers in [0, 1) (mulberry32): the same seed, the same text. */
export function seeded(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The page's settings from its address' fragment, e.g. "#prime=the%20&temperature=0.8&
 * length=400&seed=3&generate": {prime, temperature, topP, length, seed, generate}, each
 * present only if given (top-p as `top-p` or `topP`); `generate` is true when named. */
export function settingsFromHash(hash) {
  const params = new URLSearchParams(hash.replace(/^#/, ""));
  const settings = {};
  const number = (name) => (params.has(name) && params.get(name) !== "" ? Number(params.get(name)) : undefined);
  if (params.has("prime")) settings.prime = params.get("prime");
  for (const [key, name] of [["temperature", "temperature"], ["topP", "top-p"], ["topP", "topP"],
    ["length", "length"], ["seed", "seed"]]) {
    const value = number(name);
    if (value !== undefined && Number.isFinite(value)) settings[key] = value;
  }
  if (params.has("generate")) settings.generate = true;
  return settings;
}
