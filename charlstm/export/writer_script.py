"""The JavaScript and the page of the single-file writer that :mod:`charlstm.export.html_page` fills in.

Kept apart from the Python that fills it so each reads as what it is. The script has no dependency
and touches no network: the weights come from a JSON block in the page itself.

The script's public face is ``window.charlstm`` (documented in the README):

- ``charlstm.card``: the model card (shape, corpus, steps, validation loss);
- ``charlstm.vocab``: the characters, in id order;
- ``charlstm.distribution(prime)``: the next-character probabilities after reading the lead-in and
  ``prime`` from a fresh state, as an array in vocabulary order (what PyTorch's softmax gives);
- ``charlstm.generate(prime, length, temperature, seed)``: a continuation drawn with the page's
  seeded generator (mulberry32), the same text for the same arguments;
- ``charlstm.reference``: a seeded continuation computed in Python at export time, which
  ``generate`` must reproduce (``charlstm.checkReference()`` says whether it does).
"""

SCRIPT = r"""
"use strict";
(() => {
  const MODEL = JSON.parse(document.getElementById("charlstm-model").textContent);
  const GATES = {lstm: 4, gru: 3, rnn: 1};

  function bytesOf(base64) {
    const text = atob(base64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  // float16 -> float32 for all 65536 bit patterns: every half is exact in a float32.
  const HALF = new Float32Array(65536);
  for (let bits = 0; bits < 65536; bits++) {
    const sign = bits & 0x8000 ? -1 : 1, exponent = (bits >> 10) & 0x1f, fraction = bits & 0x3ff;
    HALF[bits] = exponent === 0 ? sign * fraction * 2 ** -24
      : exponent === 31 ? (fraction ? NaN : sign * Infinity)
      : sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
  }

  function decode(tensor) {
    const bytes = bytesOf(tensor.data);
    if (tensor.format === "float32") return new Float32Array(bytes.buffer);
    if (tensor.format === "float16") {
      const halves = new Uint16Array(bytes.buffer), out = new Float32Array(halves.length);
      for (let i = 0; i < halves.length; i++) out[i] = HALF[halves[i]];
      return out;
    }
    // int8 with one float32 scale per row: the value is the float32 product q * scale.
    const q = new Int8Array(bytes.buffer), scales = new Float32Array(bytesOf(tensor.scales).buffer);
    const columns = tensor.shape[1], out = new Float32Array(q.length);
    for (let i = 0; i < q.length; i++) out[i] = Math.fround(q[i] * scales[Math.floor(i / columns)]);
    return out;
  }

  const config = MODEL.config, cell = config.cell, H = config.hidden_size, G = GATES[cell] * H;
  const weights = {};
  for (const [name, tensor] of Object.entries(MODEL.tensors)) weights[name] = decode(tensor);
  const layers = [];
  for (let l = 0; l < config.num_layers; l++) {
    layers.push({
      inputs: l === 0 ? config.emb_size : H,
      wih: weights[`rnn.weight_ih_l${l}`], whh: weights[`rnn.weight_hh_l${l}`],
      bih: weights[`rnn.bias_ih_l${l}`], bhh: weights[`rnn.bias_hh_l${l}`],
      fromInput: new Float64Array(G), fromState: new Float64Array(G),
    });
  }
  const embedding = weights["embedding.weight"], headW = weights["head.weight"], headB = weights["head.bias"];
  const V = config.vocab_size, E = config.emb_size;
  const logits = new Float64Array(V), probabilities = new Float64Array(V);
  const ids = new Map(MODEL.vocab.map((char, id) => [char, id]));
  const sigmoid = (x) => 1 / (1 + Math.exp(-x));

  function matvec(w, rows, columns, x, bias, out) {
    for (let r = 0; r < rows; r++) {
      let sum = bias[r];
      const row = r * columns;
      for (let k = 0; k < columns; k++) sum += w[row + k] * x[k];
      out[r] = sum;
    }
  }

  function freshState() {
    const zeros = () => layers.map(() => new Float64Array(H));
    return {h: zeros(), c: cell === "lstm" ? zeros() : null};
  }

  // One character through every layer (PyTorch's equations for nn.LSTM, nn.GRU, nn.RNN); the logits of the next.
  function step(id, state) {
    let x = embedding.subarray(id * E, (id + 1) * E);
    layers.forEach((layer, l) => {
      const h = state.h[l], a = layer.fromInput, b = layer.fromState;
      matvec(layer.wih, G, layer.inputs, x, layer.bih, a);
      matvec(layer.whh, G, H, h, layer.bhh, b);
      if (cell === "lstm") {
        const c = state.c[l];
        for (let j = 0; j < H; j++) {
          const i = sigmoid(a[j] + b[j]), f = sigmoid(a[H + j] + b[H + j]);
          const g = Math.tanh(a[2 * H + j] + b[2 * H + j]), o = sigmoid(a[3 * H + j] + b[3 * H + j]);
          c[j] = f * c[j] + i * g;
          h[j] = o * Math.tanh(c[j]);
        }
      } else if (cell === "gru") {
        for (let j = 0; j < H; j++) {
          const r = sigmoid(a[j] + b[j]), z = sigmoid(a[H + j] + b[H + j]);
          const n = Math.tanh(a[2 * H + j] + r * b[2 * H + j]);
          h[j] = (1 - z) * n + z * h[j];
        }
      } else {
        for (let j = 0; j < H; j++) h[j] = Math.tanh(a[j] + b[j]);
      }
      x = h;
    });
    matvec(headW, V, H, x, headB, logits);
    return logits;
  }

  // Characters of a prime as ids: unknown ones become the unknown symbol when the model has one, else are left out.
  function encode(text) {
    const out = [], unknown = MODEL.sampling.never_draw;
    for (const char of text.normalize("NFC")) {
      if (ids.has(char)) out.push(ids.get(char));
      else if (unknown !== null) out.push(unknown);
    }
    return out;
  }

  function prime(text, state) {
    let last = null;
    for (const id of encode(MODEL.sampling.lead_in + text)) last = step(id, state);
    return last;
  }

  function mulberry32(seed) {
    let a = seed >>> 0;
    return () => {
      a = (a + 0x6d2b79f5) >>> 0;
      let t = a;
      t = Math.imul(t ^ (t >>> 15), t | 1);
      t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  // One id from logits at a temperature: softmax weights, then the first id whose running sum passes u * total.
  function draw(scores, temperature, random) {
    const never = MODEL.sampling.never_draw;
    let best = -1;
    for (let v = 0; v < V; v++) if (v !== never && (best < 0 || scores[v] > scores[best])) best = v;
    if (temperature < 1e-6) return best;
    const top = scores[best];
    let total = 0;
    for (let v = 0; v < V; v++) {
      probabilities[v] = v === never ? 0 : Math.exp((scores[v] - top) / temperature);
      total += probabilities[v];
    }
    const target = random() * total;
    let running = 0;
    for (let v = 0; v < V; v++) {
      running += probabilities[v];
      if (running > target) return v;
    }
    return best;
  }

  function* characters(text, length, temperature, seed) {
    const state = freshState(), random = mulberry32(seed);
    let scores = prime(text, state);
    for (let n = 0; n < length; n++) {
      const id = draw(scores, temperature, random);
      yield MODEL.vocab[id];
      if (n + 1 < length) scores = step(id, state);
    }
  }

  function distribution(text) {
    const scores = Array.from(prime(text, freshState()));
    const top = Math.max(...scores), weights = scores.map((s) => Math.exp(s - top));
    const total = weights.reduce((sum, w) => sum + w, 0);
    return weights.map((w) => w / total);
  }

  function generate(text, length, temperature, seed) {
    let out = "";
    for (const char of characters(text, length, temperature, seed)) out += char;
    return out;
  }

  const reference = MODEL.reference;
  window.charlstm = {
    card: MODEL.card, vocab: MODEL.vocab, weightFormat: MODEL.weight_format, distribution, generate, reference,
    checkReference: () => generate(reference.prime, reference.length, reference.temperature, reference.seed) === reference.text,
  };

  // The page: stream characters into the output as they are drawn, a few milliseconds of work per frame.
  const $ = (id) => document.getElementById(id);
  let running = null;
  $("generate").addEventListener("click", () => {
    const seedText = $("seed").value.trim();
    const seed = seedText === "" ? Math.floor(Math.random() * 4294967296) : Number(seedText) >>> 0;
    const prompt = $("prompt").value, length = Math.max(1, Math.min(100000, Number($("length").value) || 300));
    const temperature = Math.max(0, Number($("temperature").value) || 0);
    const output = $("output");
    output.textContent = prompt;
    const stream = characters(prompt, length, temperature, seed), started = performance.now(), token = {};
    running = token;
    $("stop").disabled = false;
    let drawn = 0;
    const pump = () => {
      if (running !== token) return;
      const until = performance.now() + 30;
      let chunk = "", done = false;
      while (performance.now() < until) {
        const next = stream.next();
        if (next.done) { done = true; break; }
        chunk += next.value;
        drawn++;
      }
      output.textContent += chunk;
      const seconds = (performance.now() - started) / 1000;
      $("status").textContent = `${drawn} characters, ${(drawn / seconds).toFixed(0)} per second, seed ${seed}`;
      if (done) { running = null; $("stop").disabled = true; } else setTimeout(pump, 0);
    };
    pump();
  });
  $("stop").addEventListener("click", () => { running = null; $("stop").disabled = true; });
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="generator" content="{marker}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
  h1 {{ font-size: 1.4rem; margin-bottom: 0.2rem; }}
  .card {{ color: #555; font-size: 0.9rem; }}
  textarea {{ width: 100%; box-sizing: border-box; font-family: ui-monospace, monospace; }}
  .controls {{ display: flex; gap: 1rem; align-items: center; margin: 0.6rem 0; flex-wrap: wrap; }}
  .controls input {{ width: 6rem; }}
  pre {{ white-space: pre-wrap; background: #f6f6f3; padding: 1rem; border-radius: 6px; min-height: 8rem; }}
  #status {{ color: #666; font-size: 0.85rem; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="card">{training}. Weights stored as {weight_format}; exported by charlstm {version}. Runs entirely in this page: nothing is sent or fetched.</p>
<textarea id="prompt" rows="3" placeholder="Type a beginning (or leave empty)"></textarea>
<div class="controls">
  <label>temperature <input id="temperature" type="number" min="0" max="5" step="0.05" value="0.8"></label>
  <label>length <input id="length" type="number" min="1" max="100000" value="500"></label>
  <label>seed <input id="seed" type="text" placeholder="random"></label>
  <button id="generate">Generate</button>
  <button id="stop" disabled>Stop</button>
</div>
<pre id="output"></pre>
<div id="status"></div>
<script type="application/json" id="charlstm-model">{model_json}</script>
<script>{script}</script>
</body>
</html>
"""
