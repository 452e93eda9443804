// charjax's stacked LSTM in plain JavaScript: the same math as charjax/lstm.py (Keras layout,
// gates i, f, c, o) for sampling statefully from an exported model. No dependencies: a web page
// embeds this file as it is, and Node imports it (tests/test_export.py).

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

/** A model from charjax-export's JSON: {vocab, layers: [{kernel, recurrent_kernel, bias}], dense}. */
export function loadModel(exported) {
  const layers = exported.layers.map((layer) => ({
    kernel: decodeTensor(layer.kernel), // [inputs, 4H], row-major
    recurrent: decodeTensor(layer.recurrent_kernel), // [H, 4H]
    bias: decodeTensor(layer.bias), // [4H]
    inputs: layer.kernel.shape[0],
    hidden: layer.recurrent_kernel.shape[0],
  }));
  const dense = {
    kernel: decodeTensor(exported.dense.kernel), // [H, V]
    bias: decodeTensor(exported.dense.bias), // [V]
  };
  const chars = Array.from(exported.vocab);
  const index = new Map(chars.map((ch, i) => [ch, i]));
  return { layers, dense, chars, index, lower: exported.recipe.lower !== false };
}

const sigmoid = (x) => 1 / (1 + Math.exp(-x));

/** The zero state: per layer {h, c}, Float32Array[H] each. */
export function zeroState(model) {
  return model.layers.map((l) => ({ h: new Float32Array(l.hidden), c: new Float32Array(l.hidden) }));
}

/** Read one char id: updates `state` in place, returns the logits (Float64Array[V]). */
export function step(model, state, id) {
  let below = null; // the layer below's h (null: the first layer reads the id)
  model.layers.forEach((layer, n) => {
    const H = layer.hidden, G = 4 * H;
    const z = new Float64Array(G);
    for (let j = 0; j < G; j++) z[j] = layer.bias[j];
    if (below === null) {
      const row = id * G; // x @ kernel for a one-hot x is a row of the kernel
      for (let j = 0; j < G; j++) z[j] += layer.kernel[row + j];
    } else {
      for (let k = 0; k < below.length; k++) {
        const x = below[k];
        if (x === 0) continue;
        const row = k * G;
        for (let j = 0; j < G; j++) z[j] += x * layer.kernel[row + j];
      }
    }
    const { h, c } = state[n];
    for (let k = 0; k < H; k++) {
      const hk = h[k];
      if (hk === 0) continue;
      const row = k * G;
      for (let j = 0; j < G; j++) z[j] += hk * layer.recurrent[row + j];
    }
    for (let k = 0; k < H; k++) {
      const i = sigmoid(z[k]), f = sigmoid(z[H + k]), g = Math.tanh(z[2 * H + k]);
      const o = sigmoid(z[3 * H + k]);
      c[k] = f * c[k] + i * g;
      h[k] = o * Math.tanh(c[k]);
    }
    below = h;
  });
  const V = model.chars.length;
  const logits = new Float64Array(V);
  for (let v = 0; v < V; v++) logits[v] = model.dense.bias[v];
  for (let k = 0; k < below.length; k++) {
    const x = below[k];
    const row = k * V;
    for (let v = 0; v < V; v++) logits[v] += x * model.dense.kernel[row + v];
  }
  return logits;
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
