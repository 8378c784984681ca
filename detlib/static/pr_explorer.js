// The precision-recall explorer (chapter 8), computed in the browser: it works in Jupyter, Colab
// and in the static HTML book, where there is no kernel. Ranking, precision, recall and the
// all-point AP are detlib.metrics' (voc_average_precision) in float64; tests/test_explorers_js.py
// compares them under node with detlib.
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.


// ------------------------------------------------------------------ arithmetic
/** Precision and recall after each detection ranked by decreasing score (ties keep their order). */
export function precisionRecall(scores, hits, numGt) {
  const order = scores.map((s, i) => i).sort((i, j) => scores[j] - scores[i] || i - j);
  const precision = [];
  const recall = [];
  let tp = 0;
  order.forEach((i, k) => {
    if (hits[i]) tp += 1;
    precision.push(tp / (k + 1));
    recall.push(tp / numGt);
  });
  return { order, precision, recall };
}

/** detlib.voc_average_precision: the area under the precision envelope, all points. */
export function averagePrecision(recall, precision) {
  const r = [0, ...recall, 1];
  const p = [0, ...precision, 0];
  for (let i = p.length - 2; i >= 0; i--) p[i] = Math.max(p[i], p[i + 1]);
  let area = 0;
  for (let i = 0; i + 1 < r.length; i++) if (r[i + 1] !== r[i]) area += (r[i + 1] - r[i]) * p[i + 1];
  return { ap: area, envelope: p.slice(1, -1) };
}

/** Detections kept at a score threshold (score >= threshold), with their precision and recall. */
export function atThreshold(scores, curve, threshold) {
  const kept = curve.order.filter((i) => scores[i] >= threshold).length;
  return kept === 0 ? { kept, precision: null, recall: 0 } : { kept, precision: curve.precision[kept - 1], recall: curve.recall[kept - 1] };
}

/** The same sentence as detlib.explorers.PRExplorer.describe(). */
export function describe(name, ap, at, threshold) {
  const head = `${name}: AP ${ap.toFixed(3)}; score >= ${threshold.toFixed(2)}: ${at.kept} detections`;
  return at.precision === null ? `${head}, recall 0.000` : `${head}, precision ${at.precision.toFixed(3)}, recall ${at.recall.toFixed(3)}`;
}

// ------------------------------------------------------------------ drawing
function draw(svg, curve, envelope, at) {
  const W = 420;
  const H = 300;
  const pad = 36;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const px = (r) => pad + r * (W - pad - 12);
  const py = (p) => H - pad - p * (H - pad - 12);
  const axes = svgElement("g", { stroke: "#999" });
  axes.append(svgElement("line", { x1: px(0), y1: py(0), x2: px(1), y2: py(0) }));
  axes.append(svgElement("line", { x1: px(0), y1: py(0), x2: px(0), y2: py(1) }));
  svg.append(axes);
  for (const [text, x, y, anchor] of [["recall", px(0.5), H - 8, "middle"], ["0", px(0), py(0) + 14, "middle"], ["1", px(1), py(0) + 14, "middle"], ["1", px(0) - 6, py(1) + 4, "end"], ["precision", px(0) + 6, py(0) - 6, "start"]]) {
    const t = svgElement("text", { x, y, "font-size": 10, fill: "#555", "text-anchor": anchor });
    t.textContent = text;
    svg.append(t);
  }
  const envelopePoints = [`${px(0)},${py(envelope[0] ?? 0)}`];
  curve.recall.forEach((r, k) => envelopePoints.push(`${px(r).toFixed(2)},${py(envelope[k]).toFixed(2)}`));
  svg.append(svgElement("polyline", { points: envelopePoints.join(" "), fill: "none", stroke: "#1f77b4", "stroke-width": 1, "stroke-dasharray": "3 2", class: "envelope" }));
  const raw = curve.recall.map((r, k) => `${px(r).toFixed(2)},${py(curve.precision[k]).toFixed(2)}`);
  svg.append(svgElement("polyline", { points: raw.join(" "), fill: "none", stroke: "#1f77b4", "stroke-width": 1.6, class: "curve" }));
  if (at.precision !== null) {
    svg.append(svgElement("circle", { cx: px(at.recall), cy: py(at.precision), r: 5, fill: "#d62728", class: "threshold-point" }));
  }
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-pr-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-pr-report";
  const note = document.createElement("div");
  note.className = "detlib-ex-note";
  note.textContent = "Solid: precision and recall after each ranked detection; dashed: the envelope whose area is the AP; red: where the score threshold cuts the ranking.";
  const svg = svgElement("svg", { class: "detlib-ex-plot detlib-pr-plot", width: 420 });
  const classRow = document.createElement("label");
  classRow.className = "detlib-ex-row";
  const select = document.createElement("select");
  select.name = "class_index";
  model.get("classes").forEach((name, k) => select.append(Object.assign(document.createElement("option"), { value: k, textContent: name })));
  select.addEventListener("change", () => {
    setAndSync(model, "class_index", Number(select.value));
    redraw();
  });
  classRow.append(Object.assign(document.createElement("span"), { textContent: "class" }), select);
  const thresholdRow = document.createElement("label");
  thresholdRow.className = "detlib-ex-row";
  const threshold = Object.assign(document.createElement("input"), { type: "range", min: 0, max: 0.95, step: 0.05, name: "score_threshold" });
  const value = document.createElement("output");
  threshold.addEventListener("input", () => {
    setAndSync(model, "score_threshold", Number(threshold.value));
    redraw();
  });
  thresholdRow.append(Object.assign(document.createElement("span"), { textContent: "score threshold" }), threshold, value);
  controls.append(classRow, thresholdRow);

  function redraw() {
    const k = model.get("class_index");
    const t = model.get("score_threshold");
    select.value = String(k);
    threshold.value = t;
    value.textContent = t.toFixed(2);
    const scores = model.get("scores")[k];
    const curve = precisionRecall(scores, model.get("hits")[k], model.get("num_gt")[k]);
    const { ap, envelope } = averagePrecision(curve.recall, curve.precision);
    const at = atThreshold(scores, curve, t);
    report.textContent = describe(model.get("classes")[k], ap, at, t);
    draw(svg, curve, envelope, at);
  }

  root.append(controls, report, note, svg);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
