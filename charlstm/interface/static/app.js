// The charlstm playground: talks to this server's own API, nothing fetched from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);
// The heat scale of `charlstm score` (views.heat): calm dark blue, through yellow, to red; saturates at 10 bits.
const HEAT = [[24, 30, 60], [40, 90, 150], [230, 200, 60], [225, 60, 40]];
const SCALE_BITS = 10;
let running = null;  // the AbortController of the generation in flight

function heat(fraction) {
  const f = Math.min(1, Math.max(0, fraction)) * (HEAT.length - 1);
  const low = Math.min(Math.floor(f), HEAT.length - 2), mix = f - low;
  return HEAT[low].map((x, i) => Math.round(x + (HEAT[low + 1][i] - x) * mix));
}
const hex = (rgb) => "#" + rgb.map((x) => x.toString(16).padStart(2, "0")).join("");
const ink = (rgb) => (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 ? "#000" : "#fff");

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function problem(response) {
  try { return (await response.json()).error.message; } catch (_) { return response.status + " " + response.statusText; }
}

function setStatus(id, text, isError) {
  $(id).textContent = text;
  $(id).classList.toggle("error", !!isError);
}

async function loadModels() {
  const response = await fetch("/api/models", { headers: headers() });
  if (!response.ok) { setStatus("status", await problem(response), true); $("key-box").open = response.status === 401; return; }
  const { models } = await response.json();
  const select = $("model");
  select.replaceChildren(...models.map((m) => new Option(m.name, m.name)));
  const describe = () => {
    const m = models.find((x) => x.name === select.value);
    if (!m) return;
    const loss = m.val_bpc == null ? "" : `, ${m.val_bpc.toFixed(3)} bits/char on validation`;
    $("model-info").textContent = `${m.cell.toUpperCase()} ${m.layers}×${m.hidden_size}, ${m.vocab_size} characters${loss}`;
    $("top-k").max = m.vocab_size;
  };
  select.onchange = describe;
  describe();
}

function showSliders() {
  $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  $("top-k-value").textContent = $("top-k").value === "0" ? "off" : $("top-k").value;
  $("top-p-value").textContent = $("top-p").value === "1" ? "off" : Number($("top-p").value).toFixed(2);
  $("min-p-value").textContent = $("min-p").value === "0" ? "off" : Number($("min-p").value).toFixed(2);
}

function unescape(text) {
  return text.replace(/\\n/g, "\n").replace(/\\t/g, "\t");
}

function generationBody() {
  const body = { model: $("model").value, prompt: $("prompt").value, temperature: Number($("temperature").value),
                 length: Number($("length").value), stream: true };
  if ($("top-k").value !== "0") body.top_k = Number($("top-k").value);
  if ($("top-p").value !== "1") body.top_p = Number($("top-p").value);
  if ($("min-p").value !== "0") body.min_p = Number($("min-p").value);
  if ($("seed").value !== "") body.seed = Number($("seed").value);
  if ($("stop-strings").value !== "") body.stop = unescape($("stop-strings").value);
  return body;
}

async function generate() {
  if (running) return;
  running = new AbortController();
  $("generate").disabled = true; $("stop").disabled = false;
  $("shown-prompt").textContent = $("prompt").value;
  const out = $("generated");
  out.textContent = ""; out.classList.add("running");
  setStatus("status", "generating…");
  const started = performance.now();
  let chars = 0, finished = false;
  try {
    const response = await fetch("/api/generate", { method: "POST", headers: headers(), body: JSON.stringify(generationBody()),
                                                    signal: running.signal });
    if (!response.ok) { setStatus("status", await problem(response), true); return; }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffered = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      const lines = buffered.split("\n");
      buffered = lines.pop();
      for (const line of lines) {
        if (!line) continue;
        const message = JSON.parse(line);
        if (message.error) { setStatus("status", message.error.message, true); continue; }
        if (message.done) {
          finished = true;
          const reasons = message.samples.map((s) => s.finish_reason).join(", ");
          const rate = message.chars_per_sec ? `, ${Math.round(message.chars_per_sec)} chars/s` : "";
          setStatus("status", `${message.generated_chars} characters in ${message.seconds.toFixed(2)} s${rate} (${reasons})`);
          continue;
        }
        if (message.index === 0) { out.textContent += message.text; chars += message.text.length; }
      }
      if (chars && !finished) setStatus("status", `generating… ${chars} characters, ${((performance.now() - started) / 1000).toFixed(1)} s`);
    }
  } catch (error) {
    if (error.name === "AbortError") setStatus("status", `stopped after ${chars} characters`);
    else setStatus("status", String(error), true);
  } finally {
    out.classList.remove("running");
    running = null;
    $("generate").disabled = false; $("stop").disabled = true;
  }
}

function stop() {
  // Closing the connection is what stops the server: it cancels the request at its next step.
  if (running) running.abort();
}

async function score() {
  const text = $("score-text").value;
  setStatus("score-status", "scoring…");
  const response = await fetch("/api/score", { method: "POST", headers: headers(),
                                               body: JSON.stringify({ model: $("model").value, text }) });
  if (!response.ok) { setStatus("score-status", await problem(response), true); return; }
  const result = await response.json();
  const cells = [...result.text].map((char, i) => {
    const span = document.createElement("span");
    const bits = result.bits[i];
    span.textContent = char === "\n" ? "↵\n" : char;
    if (bits === null) { span.className = "u"; span.title = "not in the vocabulary"; return span; }
    const rgb = heat(bits / SCALE_BITS);
    span.style.background = hex(rgb); span.style.color = ink(rgb);
    span.title = `${JSON.stringify(char)}: ${bits.toFixed(2)} bits`;
    return span;
  });
  $("score-output").replaceChildren(...cells);
  const mean = result.mean_bits == null ? "–" : result.mean_bits.toFixed(3);
  setStatus("score-status", `${result.scored_chars} characters, mean ${mean} bits/char`);
  const body = $("spans").querySelector("tbody");
  body.replaceChildren(...result.spans.map((s) => {
    const row = document.createElement("tr");
    for (const cell of [s.bits.toFixed(1), s.peak_bits.toFixed(1), `${s.line}:${s.column}`, s.text]) {
      const td = document.createElement("td"); td.textContent = cell; row.append(td);
    }
    return row;
  }));
  $("spans").hidden = result.spans.length === 0;
}

function showLegend() {
  $("legend").replaceChildren("bits: ", ...[0, 1, 2, 3, 4].map((n) => {
    const span = document.createElement("span"), rgb = heat(n / 4);
    span.style.background = hex(rgb); span.style.color = ink(rgb);
    span.textContent = `${(SCALE_BITS * n) / 4}${n === 4 ? "+" : ""}`;
    return span;
  }));
}

for (const tab of document.querySelectorAll(".tab")) {
  tab.onclick = () => {
    for (const other of document.querySelectorAll(".tab")) {
      other.classList.toggle("active", other === tab);
      $(other.dataset.view).hidden = other !== tab;
    }
  };
}
for (const id of ["temperature", "top-k", "top-p", "min-p"]) $(id).oninput = showSliders;
$("generate").onclick = generate;
$("stop").onclick = stop;
$("score-button").onclick = score;
$("api-key").onchange = loadModels;
$("prompt").onkeydown = (event) => { if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) generate(); };
showSliders();
showLegend();
loadModels();
