// npcnn explore: the page. Plain JavaScript, no libraries, no build step.
//
// The drawing is sent as strokes (canvas coordinates); the server turns it into the 28 x 28 image the
// net sees (npcnn/explore/drawing.py) and sends that image back with everything else, so the preview
// shows exactly what the net received. All numbers come from the JSON API (npcnn/explore/api.py).
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  info: null,          // GET /api/info
  strokes: [],         // the drawing: [[[x, y], ...], ...] in canvas units
  input: null,         // what the next request sends: {strokes} or {image}
  image: null,         // the 28 x 28 image of the last analysis
  last: null,          // the last /api/analyze answer, arrays decoded
  view: "forward",     // "forward": activations, "backward": gradients
  pixel: null,         // the clicked conv pixel {layer, channel, row, col}
  analyses: 0,         // answers received (the tests wait on it)
  attacks: 0,
  overlays: 0,
  pixels: 0,
};
window.explore = { state };

// ------------------------------------------------------------------ requests
function status(text, error) {
  const s = $("status");
  s.textContent = text;
  s.className = error ? "error" : "";
}

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function decode(b64) {
  const bytes = atob(b64);
  const u8 = new Uint8Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) u8[i] = bytes.charCodeAt(i);
  return new Float32Array(u8.buffer);
}

// One analysis in flight at a time; drawing while it runs asks for one more when it returns.
let inflight = false, again = false;
window.explore.idle = () => !inflight && !again;
function analyze() {
  if (!state.input) return;
  if (inflight) { again = true; return; }
  inflight = true; again = false;
  const target = $("target").value === "" ? null : Number($("target").value);
  api("/api/analyze", { ...state.input, target, encoding: "base64" })
    .then((r) => {
      r.layers.forEach((l) => { l.activation = decode(l.activation); l.gradient = decode(l.gradient); });
      r.input_gradient = decode(r.input_gradient);
      state.last = r;
      state.image = r.image;
      state.analyses += 1;
      render();
      status("");
      if ($("overlay-method").value) overlay();
      if (state.pixel) pixel();
    })
    .catch((e) => status(e.message, true))
    .finally(() => { inflight = false; if (again) analyze(); });
}

// ------------------------------------------------------------------ drawing
const draw = $("draw"), pen = draw.getContext("2d");
let drawing = false;

function canvasPoint(e) {
  const rect = draw.getBoundingClientRect();
  const k = state.info.canvas / rect.width;
  return [Math.round((e.clientX - rect.left) * k * 100) / 100, Math.round((e.clientY - rect.top) * k * 100) / 100];
}

function clearCanvas() {
  pen.fillStyle = "#000";
  pen.fillRect(0, 0, draw.width, draw.height);
}

function strokeTo(stroke) {
  // the browser's round pen, the one npcnn/explore/drawing.py rasterises
  pen.strokeStyle = pen.fillStyle = "#fff";
  pen.lineWidth = state.info.brush;
  pen.lineCap = pen.lineJoin = "round";
  const n = stroke.length;
  if (n === 1) {
    pen.beginPath(); pen.arc(stroke[0][0], stroke[0][1], state.info.brush / 2, 0, 2 * Math.PI); pen.fill();
  } else {
    pen.beginPath(); pen.moveTo(stroke[n - 2][0], stroke[n - 2][1]); pen.lineTo(stroke[n - 1][0], stroke[n - 1][1]);
    pen.stroke();
  }
}

draw.addEventListener("pointerdown", (e) => {
  if (!state.info) return;
  if (!state.input || !state.input.strokes) { state.strokes = []; clearCanvas(); }
  drawing = true;
  draw.setPointerCapture(e.pointerId);
  state.strokes.push([canvasPoint(e)]);
  strokeTo(state.strokes[state.strokes.length - 1]);
  state.input = { strokes: state.strokes };
  analyze();
});
draw.addEventListener("pointermove", (e) => {
  if (!drawing) return;
  const stroke = state.strokes[state.strokes.length - 1];
  const p = canvasPoint(e), q = stroke[stroke.length - 1];
  if (p[0] === q[0] && p[1] === q[1]) return;
  stroke.push(p);
  strokeTo(stroke);
  analyze();
});
function endStroke() { if (drawing) { drawing = false; analyze(); } }
draw.addEventListener("pointerup", endStroke);
draw.addEventListener("pointercancel", endStroke);

$("clear").onclick = () => {
  state.strokes = []; state.input = { strokes: [] }; clearCanvas(); analyze();
};

$("load").onclick = () => {
  const source = $("source").value, index = Number($("index").value) || 0;
  api(`/api/sample?source=${encodeURIComponent(source)}&index=${index}`)
    .then((r) => {
      showImage(r.image);
      $("sample-note").textContent = `test image ${r.test_index}, label ${state.info.classes[r.label]}` +
        ` (${r.index + 1} of ${r.count}). Draw to start a new digit.`;
    })
    .catch((e) => status(e.message, true));
};

function showImage(image) {   // a 28 x 28 image on the drawing canvas, and analysed as it is
  state.strokes = [];
  state.input = { image };
  const small = document.createElement("canvas");
  small.width = small.height = image.length;
  paint(small, image.length, image.length, (i) => image[Math.floor(i / image.length)][i % image.length], grey);
  clearCanvas();
  pen.imageSmoothingEnabled = false;
  pen.drawImage(small, 0, 0, draw.width, draw.height);
  analyze();
}

// ------------------------------------------------------------------ colours and pictures
const grey = (v) => { const g = Math.round(255 * Math.min(Math.max(v, 0), 1)); return [g, g, g]; };
function diverging(scale) {   // 0 white, positive red, negative blue; |v| = scale is full colour
  return (v) => {
    const t = scale > 0 ? Math.max(-1, Math.min(1, v / scale)) : 0;
    return t >= 0 ? [255, Math.round(255 * (1 - t)), Math.round(255 * (1 - 0.9 * t))]
                  : [Math.round(255 * (1 + t)), Math.round(255 * (1 + 0.6 * t)), 255];
  };
}
function paint(canvas, w, h, value, colour) {
  const ctx = canvas.getContext("2d"), img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const [r, g, b] = colour(value(i));
    img.data[4 * i] = r; img.data[4 * i + 1] = g; img.data[4 * i + 2] = b; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}
function maxAbs(a) { let m = 0; for (const v of a) m = Math.max(m, Math.abs(v)); return m; }
const fmt = (v) => (Math.abs(v) >= 100 || (Math.abs(v) < 0.001 && v !== 0) ? v.toExponential(2) : v.toFixed(3));

// ------------------------------------------------------------------ the layers
const views = {
  forward: "Each layer's output for this image (red positive, blue negative, white 0; one scale per layer).",
  backward: "The backward pass: the gradient of the chosen class's logit with respect to each layer's output, " +
            "from the logits (bottom) down to the input (top). Red: raising the value raises the logit.",
};

function buildLayers() {
  const box = $("layers");
  box.innerHTML = "";
  const rows = [{ name: "input", type: "image", shape: [1].concat(state.info.image_size), index: -1 }]
    .concat(state.info.layers);
  for (const layer of rows) {
    const div = document.createElement("div");
    div.className = "layer" + (layer.type === "Conv2d" ? " clickable" : "");
    div.id = `layer-${layer.index}`;
    div.innerHTML = `<div class="title"></div><div class="tiles"></div>`;
    const tiles = div.querySelector(".tiles");
    const shape = layer.shape;
    if (shape.length === 3) {
      for (let c = 0; c < shape[0]; c++) {
        const t = document.createElement("canvas");
        t.width = shape[2]; t.height = shape[1]; t.dataset.channel = c;
        if (layer.type === "Conv2d") t.addEventListener("click", (e) => pickPixel(layer, c, t, e));
        tiles.appendChild(t);
      }
    } else {
      const n = shape[0], cols = n <= 10 ? n : Math.min(n, 50), cell = n <= 10 ? 24 : 6;
      const t = document.createElement("canvas");
      t.width = cols; t.height = Math.ceil(n / cols); t.className = "vector";
      t.style.width = `${cols * cell}px`; t.style.height = `${t.height * cell}px`;
      t.style.imageRendering = "pixelated";
      tiles.appendChild(t);
    }
    box.appendChild(div);
  }
}

function render() {
  const r = state.last, back = state.view === "backward";
  paint($("input"), 28, 28, (i) => r.image[Math.floor(i / 28)][i % 28], grey);
  renderProbs(r);
  $("view-note").textContent = views[state.view] +
    (back ? ` Class ${state.info.classes[r.target]}.` : "");
  // the input row: the image, or dS/dx
  const input = $("layer--1");
  const flat = Float32Array.from(r.image.flat());
  fill(input, "input", back ? r.input_gradient : flat, [1, 28, 28], back ? "dS/dx (pixels)" : "pixels", back);
  for (const l of r.layers) {
    const meta = state.info.layers[l.index];
    fill($(`layer-${l.index}`), `${l.name} <span>${meta.type}</span>`, back ? l.gradient : l.activation, l.shape,
      back ? `dS/d ${l.name}` : "output", true);
  }
  markPixel();
}

function fill(div, title, values, shape, what, signed) {
  const m = maxAbs(values);
  div.querySelector(".title").innerHTML =
    `<b>${title}</b> &middot; ${shape.join("&times;")} &middot; ${what}, max |value| ${fmt(m)}`;
  const colour = signed ? diverging(m) : grey;
  const canvases = div.querySelectorAll("canvas");
  if (shape.length === 3) {
    const size = shape[1] * shape[2];
    canvases.forEach((t, c) => paint(t, shape[2], shape[1], (i) => values[c * size + i], colour));
  } else {
    const t = canvases[0];
    paint(t, t.width, t.height, (i) => (i < values.length ? values[i] : 0), colour);
  }
}

function renderProbs(r) {
  const box = $("probs");
  box.innerHTML = "";
  r.probabilities.forEach((p, c) => {
    const row = document.createElement("div");
    row.className = "prob" + (c === r.prediction ? " pred" : "") + (c === r.target ? " target" : "");
    row.innerHTML = `<span class="name">${state.info.classes[c]}</span>` +
      `<div><div class="bar" style="width:${(100 * p).toFixed(1)}%"></div></div><span>${(100 * p).toFixed(1)} %</span>`;
    box.appendChild(row);
  });
}

// ------------------------------------------------------------------ one conv pixel
function pickPixel(layer, channel, tile, e) {
  const rect = tile.getBoundingClientRect();   // the map fills the content box, inside the border
  const y = (e.clientY - rect.top - tile.clientTop) / tile.clientHeight;
  const x = (e.clientX - rect.left - tile.clientLeft) / tile.clientWidth;
  const row = Math.max(0, Math.min(layer.shape[1] - 1, Math.floor(y * layer.shape[1])));
  const col = Math.max(0, Math.min(layer.shape[2] - 1, Math.floor(x * layer.shape[2])));
  state.pixel = { layer: layer.index, channel, row, col };
  markPixel();
  pixel();
}

function markPixel() {
  document.querySelectorAll("canvas.picked").forEach((t) => t.classList.remove("picked"));
  if (!state.pixel) return;
  const t = document.querySelector(`#layer-${state.pixel.layer} canvas[data-channel="${state.pixel.channel}"]`);
  if (t) t.classList.add("picked");
}

function pixel() {
  const p = state.pixel, target = state.last ? state.last.target : null;
  api("/api/pixel", { image: state.image, target, ...p })
    .then((r) => { state.pixels += 1; showPixel(r); })
    .catch((e) => status(e.message, true));
}

function table(rows, caption, scale) {   // a small matrix as a table of numbers, coloured like the maps
  const colour = diverging(scale === undefined ? maxAbs(rows.flat()) : scale);
  const cells = rows.map((row) => "<tr>" + row.map((v) => {
    const [r, g, b] = colour(v);
    return `<td style="background:rgb(${r},${g},${b})">${fmt(v)}</td>`;
  }).join("") + "</tr>").join("");
  return `<table class="num"><caption>${caption}</caption>${cells}</table>`;
}

const sumOf = (a) => a.flat(Infinity).reduce((s, v) => s + v, 0);

function topChannels(arrays, k) {   // indices of the k arrays with the largest |sum|
  return arrays.map((a, i) => [Math.abs(sumOf(a)), i]).sort((x, y) => y[0] - x[0]).slice(0, k).map((x) => x[1]);
}

function showPixel(r) {
  const [r0, r1, c0, c1] = r.receptive_field, k = 168 / 28, rf = $("rf");
  Object.assign(rf.style, { left: `${c0 * k}px`, top: `${r0 * k}px`, width: `${(c1 - c0) * k}px`,
                            height: `${(r1 - r0) * k}px` });
  rf.hidden = false;
  let html = `<h3>${r.name}, channel ${r.channel}, pixel (${r.row}, ${r.col})</h3>` +
    `<p class="note">Receptive field on the input: rows ${r0}..${r1 - 1}, columns ${c0}..${c1 - 1} (cyan box).</p>`;
  if (state.view === "forward") {
    const cin = r.kernel.length, n = cin * r.kernel[0].length * r.kernel[0][0].length;
    html += `<p class="eq">value = sum of ${n} products kernel &times; input + bias<br>` +
      `= ${fmt(r.sum - r.bias)} + ${fmt(r.bias)} = ${fmt(r.sum)} (the map says ${fmt(r.value)})</p>`;
    const show = cin <= 2 ? [...Array(cin).keys()] : topChannels(r.products, 6);
    if (cin > 2) html += `<p class="note">The ${show.length} input channels whose products sum largest, of ${cin}:</p>`;
    for (const c of show) {
      html += `<div>${cin > 1 ? `<b>input channel ${c}</b> (sum ${fmt(sumOf(r.products[c]))})<br>` : ""}` +
        table(r.patch[c], "input under the kernel") + table(r.kernel[c], "kernel") +
        table(r.products[c], "products") + "</div>";
    }
  } else {
    const f = r.comes_from;
    html += `<p class="eq">dS/d(pixel) = ${fmt(r.gradient)} for class ${state.info.classes[r.target]}</p>`;
    html += "<p>Where it comes from, going up the net:</p><ul>" +
      f.path.map((s) => `<li>${s.name}: ${s.rule} (&times;${fmt(s.factor)})</li>`).join("") + "</ul>";
    if (f.via === null) {
      html += "<p>So no gradient reaches this pixel: it is 0.</p>";
    } else if (Array.isArray(f.products[0])) {
      const outs = f.products.length;
      html += `<p class="eq">It is input element (${f.element.join(", ")}) of ${f.via_name}: the sum over the ` +
        `${outs} output channels &times; kernel positions that see it of weight &times; dS/d(output) ` +
        `= ${fmt(f.sum)}; times the factors above = ${fmt(f.gradient)}.</p>`;
      for (const o of topChannels(f.products, 4)) html += table(f.products[o], `${f.via_name} channel ${o}`);
    } else {
      const top = f.products.map((v, i) => [Math.abs(v), i]).sort((a, b) => b[0] - a[0]).slice(0, 8);
      html += `<p class="eq">It is input ${f.element[0]} of ${f.via_name}: the sum over its ${f.products.length} ` +
        `outputs of weight &times; dS/d(output) = ${fmt(f.sum)}; times the factors above = ${fmt(f.gradient)}.` +
        `</p><p class="note">Largest products: ${top.map(([, i]) => `unit ${i}: ${fmt(f.products[i])}`).join(", ")}</p>`;
    }
    if (r.sends.length <= 2) {
      html += "<p>What it sends down: dS/d(pixel) &times; kernel, added to the gradient of its input patch:</p>" +
        r.sends.map((s) => table(s, "sent to the input patch")).join("");
    }
  }
  $("details").innerHTML = html;
}

// ------------------------------------------------------------------ overlays and the attack
function overlay() {
  const method = $("overlay-method").value, canvas = $("overlay");
  canvas.getContext("2d").clearRect(0, 0, 28, 28);
  $("overlay-note").textContent = "";
  if (!method || !state.image) return;
  const target = state.last ? state.last.target : null;
  api("/api/overlay", { image: state.image, target, method })
    .then((r) => {
      const values = r.map.flat(), m = maxAbs(values), ctx = canvas.getContext("2d"), img = ctx.createImageData(28, 28);
      values.forEach((v, i) => {
        const t = m > 0 ? v / m : 0;
        img.data[4 * i] = t >= 0 ? 255 : 0; img.data[4 * i + 1] = t >= 0 ? 60 : 120; img.data[4 * i + 2] = t >= 0 ? 0 : 255;
        img.data[4 * i + 3] = Math.round(200 * Math.abs(t));
      });
      ctx.putImageData(img, 0, 0);
      state.overlays += 1;
      $("overlay-note").textContent = `${r.note}, class ${state.info.classes[r.target]}` +
        (r.signed ? " (red: the patch lowers it, blue: raises it)" : "");
    })
    .catch((e) => status(e.message, true));
}

$("attack").onclick = () => {
  if (!state.image) return;
  const target = Number($("attack-target").value), button = $("attack");
  button.disabled = true;
  status("attacking...");
  api("/api/attack", { image: state.image, target })
    .then((r) => {
      state.adversarial = r;
      state.attacks += 1;
      paint($("adv"), 28, 28, (i) => r.image[Math.floor(i / 28)][i % 28], grey);
      const noise = r.perturbation.flat();
      paint($("noise"), 28, 28, (i) => noise[i], diverging(maxAbs(noise)));
      const name = state.info.classes;
      $("attack-text").textContent = `After ${r.steps} Adam steps: the net says ${name[r.prediction]} ` +
        `(p(${name[r.target]}) = ${(100 * r.probabilities[r.target]).toFixed(1)} %), ` +
        `${r.success ? "fooled" : "not fooled yet"}. Perturbation: largest pixel change ${r.linf.toFixed(3)}, ` +
        `L2 ${r.l2.toFixed(3)}.`;
      $("attack-result").hidden = false;
      status("");
    })
    .catch((e) => status(e.message, true))
    .finally(() => { button.disabled = false; });
};
$("use-adv").onclick = () => { if (state.adversarial) showImage(state.adversarial.image); };

// ------------------------------------------------------------------ controls and start
function setView(view) {
  state.view = view;
  $("view-forward").classList.toggle("on", view === "forward");
  $("view-backward").classList.toggle("on", view === "backward");
  if (state.last) render();
  if (state.pixel) pixel();
}
$("view-forward").onclick = () => setView("forward");
$("view-backward").onclick = () => setView("backward");
$("target").onchange = () => analyze();
$("overlay-method").onchange = () => overlay();

api("/api/info").then((info) => {
  state.info = info;
  $("run").textContent = `run: ${info.run}`;
  draw.width = draw.height = info.canvas;
  info.classes.forEach((name, c) => {
    $("target").add(new Option(name, c));
    $("attack-target").add(new Option(name, c));
  });
  $("attack-target").value = "3";
  $("index").max = info.samples - 1;
  buildLayers();
  clearCanvas();
  state.input = { strokes: [] };
  analyze();
}).catch((e) => status(e.message, true));
