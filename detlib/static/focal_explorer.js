// The focal-loss explorer (chapter 4), computed in the browser: it works in Jupyter, Colab and in
// the static HTML book, where there is no kernel. The loss is detlib.sigmoid_focal_loss's formula
// in float64 (tests/test_explorers_js.py compares it under node with detlib on random settings).
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.

export const EASY = 0.9; // an anchor is "easy" when the probability of its true label p_t > 0.9

// ------------------------------------------------------------------ arithmetic
function sigmoid(x) {
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

/** binary_cross_entropy_with_logits, stable for any logit. */
function bce(x, t) {
  return (1 - t) * x + Math.max(-x, 0) + Math.log1p(Math.exp(-Math.abs(x)));
}

/** The focal loss of one anchor (detlib.sigmoid_focal_loss, reduction "none"). */
export function focal(x, t, alpha, gamma) {
  const p = sigmoid(x);
  const pt = p * t + (1 - p) * (1 - t);
  const loss = bce(x, t) * (1 - pt) ** gamma;
  return alpha >= 0 ? (alpha * t + (1 - alpha) * (1 - t)) * loss : loss;
}

/** Totals over an anchor set: the focal loss and cross-entropy of positives, hard and easy negatives. */
export function shares(logits, targets, alpha, gamma) {
  const groups = { positive: [0, 0, 0], hard: [0, 0, 0], easy: [0, 0, 0] }; // [count, focal, ce]
  logits.forEach((x, i) => {
    const t = targets[i];
    const pt = t === 1 ? sigmoid(x) : 1 - sigmoid(x);
    const group = t === 1 ? "positive" : pt > EASY ? "easy" : "hard";
    groups[group][0] += 1;
    groups[group][1] += focal(x, t, alpha, gamma);
    groups[group][2] += bce(x, t);
  });
  const focalTotal = groups.positive[1] + groups.hard[1] + groups.easy[1];
  const ceTotal = groups.positive[2] + groups.hard[2] + groups.easy[2];
  return { groups, focalTotal, ceTotal };
}

/** The same sentence as detlib.explorers.FocalLossExplorer.describe(). */
export function describe(s, alpha, gamma) {
  const fmt = (n) => n.toLocaleString("en-US");
  const pct = (v, total) => `${((100 * v) / total).toFixed(1)}%`;
  const g = s.groups;
  return (
    `gamma ${gamma.toFixed(1)}, alpha ${alpha.toFixed(2)}: focal loss ${s.focalTotal.toFixed(2)} ` +
    `(cross-entropy ${s.ceTotal.toFixed(1)}); ${fmt(g.easy[0])} easy negatives give ` +
    `${pct(g.easy[1], s.focalTotal)} of it (${pct(g.easy[2], s.ceTotal)} of the cross-entropy), ` +
    `${fmt(g.hard[0])} hard negatives ${pct(g.hard[1], s.focalTotal)}, ` +
    `${fmt(g.positive[0])} positives ${pct(g.positive[1], s.focalTotal)}`
  );
}

// ------------------------------------------------------------------ drawing
function text(svg, content, attributes) {
  const t = svgElement("text", { "font-size": 10, fill: "#555", ...attributes });
  t.textContent = content;
  svg.append(t);
}

function drawCurves(svg, gamma) {
  const W = 340;
  const H = 230;
  const pad = 32;
  const top = 4;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const px = (p) => pad + p * (W - pad - 10);
  const py = (v) => H - pad - (Math.min(v, top) / top) * (H - pad - 12);
  svg.append(svgElement("rect", { x: px(EASY), y: py(top), width: px(1) - px(EASY), height: py(0) - py(top), fill: "#2ca02c", "fill-opacity": 0.1 }));
  text(svg, "easy", { x: px(0.95), y: py(top) + 12, "text-anchor": "middle" });
  const axes = svgElement("g", { stroke: "#999" });
  axes.append(svgElement("line", { x1: pad, y1: py(0), x2: px(1), y2: py(0) }));
  axes.append(svgElement("line", { x1: pad, y1: py(0), x2: pad, y2: py(top) }));
  svg.append(axes);
  text(svg, "probability of the true label p_t", { x: (W + pad) / 2, y: H - 8, "text-anchor": "middle" });
  text(svg, "0", { x: pad, y: py(0) + 12, "text-anchor": "middle" });
  text(svg, "1", { x: px(1), y: py(0) + 12, "text-anchor": "middle" });
  text(svg, String(top), { x: pad - 4, y: py(top) + 4, "text-anchor": "end" });
  text(svg, "loss", { x: pad - 4, y: py(top / 2), "text-anchor": "end" });
  for (const [g, colour, dash, cls] of [[0, "#7f7f7f", "4 3", "ce"], [gamma, "#d62728", "none", "focal"]]) {
    const points = [];
    for (let k = 1; k <= 200; k++) {
      const p = k / 200;
      points.push(`${px(p).toFixed(2)},${py(-((1 - p) ** g) * Math.log(p)).toFixed(2)}`);
    }
    svg.append(svgElement("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 1.8, "stroke-dasharray": dash, class: `curve curve-${cls}` }));
  }
  text(svg, "cross-entropy (gamma 0)", { x: px(0.3), y: py(top) + 12, fill: "#7f7f7f" });
  text(svg, `focal, gamma ${gamma.toFixed(1)}`, { x: px(0.3), y: py(top) + 26, fill: "#d62728" });
}

function drawShares(svg, s) {
  const W = 320;
  const H = 230;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const colours = { positive: "#1f77b4", hard: "#ff7f0e", easy: "#2ca02c" };
  const bars = [["cross-entropy", 2, s.ceTotal], ["focal loss", 1, s.focalTotal]];
  bars.forEach(([label, column, total], row) => {
    const y = 40 + row * 70;
    text(svg, label, { x: 10, y: y - 6, fill: "#333", "font-size": 11 });
    let x = 10;
    for (const group of ["positive", "hard", "easy"]) {
      const width = (300 * s.groups[group][column]) / total;
      svg.append(svgElement("rect", { x, y, width: Math.max(width, 0), height: 26, fill: colours[group], class: `share share-${group}` }));
      x += width;
    }
  });
  [["positive", "positives"], ["hard", "hard negatives"], ["easy", "easy negatives (p_t > 0.9)"]].forEach(([group, label], k) => {
    svg.append(svgElement("rect", { x: 10, y: 180 + 14 * k - 9, width: 10, height: 10, fill: colours[group] }));
    text(svg, label, { x: 26, y: 180 + 14 * k, fill: "#333" });
  });
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-focal-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-focal-report";
  const figures = document.createElement("div");
  figures.className = "detlib-ex-figures";
  const curves = svgElement("svg", { class: "detlib-ex-plot detlib-focal-curves", width: 340 });
  const bars = svgElement("svg", { class: "detlib-ex-plot detlib-focal-shares", width: 320 });
  figures.append(curves, bars);
  const update = (name, value) => {
    setAndSync(model, name, value);
    redraw();
  };
  const sliders = {
    gamma: slider("gamma", "gamma", 0, 5, 0.5, update),
    alpha: slider("alpha (positives)", "alpha", 0.05, 0.95, 0.05, update),
  };
  controls.append(sliders.gamma.row, sliders.alpha.row);

  function redraw() {
    const gamma = model.get("gamma");
    const alpha = model.get("alpha");
    sliders.gamma.input.value = gamma;
    sliders.gamma.value.textContent = gamma.toFixed(1);
    sliders.alpha.input.value = alpha;
    sliders.alpha.value.textContent = alpha.toFixed(2);
    const s = shares(model.get("logits"), model.get("targets"), alpha, gamma);
    report.textContent = describe(s, alpha, gamma);
    drawCurves(curves, gamma);
    drawShares(bars, s);
  }

  root.append(controls, report, figures);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
