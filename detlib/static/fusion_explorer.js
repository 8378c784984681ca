// The fusion explorer (chapter 5), computed in the browser: it works in Jupyter, Colab and in the
// static HTML book, where there is no kernel. The weights are detlib.WeightedFusion's ("fast":
// relu(w) / (sum relu(w) + eps); "softmax") in float64; tests/test_explorers_js.py compares them
// and the fused maps under node with detlib.
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.

export const EPS = 1e-4;

// ------------------------------------------------------------------ arithmetic
/** The normalised weights of raw weights `w` for a fusion kind ("fast" or "softmax"). */
export function normalisedWeights(w, kind) {
  if (kind === "softmax") {
    const top = Math.max(...w);
    const e = w.map((v) => Math.exp(v - top));
    const total = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / total);
  }
  const positive = w.map((v) => Math.max(v, 0));
  const total = positive.reduce((a, b) => a + b, 0);
  return positive.map((v) => v / (total + EPS));
}

/** weights[0] * inputs[0] + weights[1] * inputs[1] + ..., element by element, in that order. */
export function fuse(inputs, weights) {
  return inputs[0].map((_, k) => {
    let out = weights[0] * inputs[0][k];
    for (let i = 1; i < inputs.length; i++) out = out + weights[i] * inputs[i][k];
    return out;
  });
}

/** The same sentence as detlib.explorers.FusionExplorer.describe(). */
export function describe(weights, kind) {
  const name = kind === "softmax" ? "softmax fusion" : "fast normalised fusion";
  const total = weights.reduce((a, b) => a + b, 0);
  return `${name}: weights ${weights.map((v) => v.toFixed(3)).join(", ")} (sum ${total.toFixed(5)})`;
}

// ------------------------------------------------------------------ drawing
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c"];

function drawSignals(svg, inputs, fused, weights, names) {
  const W = 420;
  const H = 240;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const all = inputs.flat().concat(fused);
  const low = Math.min(...all, 0);
  const high = Math.max(...all, 1);
  const n = fused.length;
  const px = (k) => 40 + (k / (n - 1)) * (W - 60);
  const py = (v) => H - 30 - ((v - low) / (high - low)) * (H - 60);
  svg.append(svgElement("line", { x1: 40, y1: py(0), x2: W - 20, y2: py(0), stroke: "#bbb" }));
  inputs.forEach((signal, i) => {
    const points = signal.map((v, k) => `${px(k).toFixed(1)},${py(v).toFixed(1)}`).join(" ");
    svg.append(svgElement("polyline", { points, fill: "none", stroke: COLOURS[i], "stroke-width": 1.2, "stroke-opacity": 0.35 + 0.65 * Math.min(weights[i] * 1.5, 1), class: `input input-${i}` }));
    const label = svgElement("text", { x: 44 + 110 * i, y: 14, fill: COLOURS[i], "font-size": 11, "font-weight": 600 });
    label.textContent = `${names[i]} x ${weights[i].toFixed(2)}`;
    svg.append(label);
  });
  const points = fused.map((v, k) => `${px(k).toFixed(1)},${py(v).toFixed(1)}`).join(" ");
  svg.append(svgElement("polyline", { points, fill: "none", stroke: "#d62728", "stroke-width": 2.6, class: "fused" }));
  const label = svgElement("text", { x: W - 24, y: H - 10, fill: "#d62728", "font-size": 11, "font-weight": 600, "text-anchor": "end" });
  label.textContent = "fused output (one row of the map)";
  svg.append(label);
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-fusion-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-fusion-report";
  const svg = svgElement("svg", { class: "detlib-ex-plot detlib-fusion-plot", width: "100%" });
  const names = model.get("names");
  const kindRow = document.createElement("label");
  kindRow.className = "detlib-ex-row";
  const kind = document.createElement("select");
  kind.name = "kind";
  for (const [value, text] of [["fast", "fast normalised (relu)"], ["softmax", "softmax"]]) {
    kind.append(Object.assign(document.createElement("option"), { value, textContent: text }));
  }
  kind.addEventListener("change", () => {
    setAndSync(model, "kind", kind.value);
    redraw();
  });
  kindRow.append(Object.assign(document.createElement("span"), { textContent: "fusion" }), kind);
  controls.append(kindRow);
  const inputs = [];
  names.forEach((name, i) => {
    const row = document.createElement("label");
    row.className = "detlib-ex-row";
    const input = Object.assign(document.createElement("input"), { type: "range", min: -2, max: 4, step: 0.1, name: `w${i}` });
    const value = document.createElement("output");
    input.addEventListener("input", () => {
      const w = [...model.get("raw_weights")];
      w[i] = Number(input.value);
      setAndSync(model, "raw_weights", w);
      redraw();
    });
    row.append(Object.assign(document.createElement("span"), { textContent: `raw weight of ${name}` }), input, value);
    controls.append(row);
    inputs.push({ input, value });
  });

  function redraw() {
    const raw = model.get("raw_weights");
    kind.value = model.get("kind");
    inputs.forEach(({ input, value }, i) => {
      input.value = raw[i];
      value.textContent = raw[i].toFixed(1);
    });
    const weights = normalisedWeights(raw, model.get("kind"));
    report.textContent = describe(weights, model.get("kind"));
    drawSignals(svg, model.get("signals"), fuse(model.get("signals"), weights), weights, names);
  }

  root.append(controls, report, svg);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
