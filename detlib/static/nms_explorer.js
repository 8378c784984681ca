// The NMS explorer (chapter 7), computed in the browser: it works in Jupyter, Colab and in the
// static HTML book, where there is no kernel. The arithmetic is detlib.nms's and
// detlib.soft_nms's on float64 boxes, operation for operation (tests/test_explorers_js.py runs
// this module under node and compares the kept indices and scores with detlib).
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.


// ------------------------------------------------------------------ arithmetic
/** IoU of boxes a and b as detlib's NMS computes it: inter / ((area_a + area_b) - inter);
 * NaN (two zero-area boxes) becomes -Infinity, which never suppresses. */
export function iou(a, b) {
  const w = Math.max(Math.min(a[2], b[2]) - Math.max(a[0], b[0]), 0);
  const h = Math.max(Math.min(a[3], b[3]) - Math.max(a[1], b[1]), 0);
  const inter = w * h;
  const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  const value = inter / union;
  return Number.isNaN(value) ? -Infinity : value;
}

/** Indices by decreasing score, equal scores by increasing index. */
export function visitingOrder(scores) {
  return scores.map((s, i) => i).sort((i, j) => scores[j] - scores[i] || i - j);
}

/** Greedy NMS: {keep, suppressedBy}, suppressedBy[i] = the kept box that removed box i (or -1). */
export function greedyNms(boxes, scores, threshold) {
  const keep = [];
  const suppressedBy = boxes.map(() => -1);
  for (const i of visitingOrder(scores)) {
    if (suppressedBy[i] !== -1) continue;
    keep.push(i);
    for (let j = 0; j < boxes.length; j++) {
      if (j !== i && suppressedBy[j] === -1 && !keep.includes(j) && iou(boxes[i], boxes[j]) > threshold) {
        suppressedBy[j] = i;
      }
    }
  }
  return { keep, scores: keep.map((i) => scores[i]), suppressedBy };
}

/** Soft-NMS (detlib.soft_nms): {keep, scores} in the order picked, with the decayed scores. */
export function softNms(boxes, scores, method, threshold, sigma, scoreThreshold) {
  let alive = [];
  let work = [];
  scores.forEach((s, i) => {
    if (s >= scoreThreshold) {
      alive.push(i);
      work.push(s);
    }
  });
  const keep = [];
  const kept = [];
  while (alive.length) {
    let best = 0;
    for (let k = 1; k < work.length; k++) if (work[k] > work[best]) best = k; // first of equal maxima
    keep.push(alive[best]);
    kept.push(work[best]);
    const picked = boxes[alive[best]];
    const nextAlive = [];
    const nextWork = [];
    for (let k = 0; k < alive.length; k++) {
      const overlap = Math.max(iou(picked, boxes[alive[k]]), 0);
      const decay =
        method === "gaussian" ? Math.exp(-(overlap * overlap) / sigma) : overlap > threshold ? 1 - overlap : 1;
      const score = work[k] * decay;
      if (k !== best && score >= scoreThreshold) {
        nextAlive.push(alive[k]);
        nextWork.push(score);
      }
    }
    alive = nextAlive;
    work = nextWork;
  }
  return { keep, scores: kept };
}

/** What the explorer computes for a setting: method "greedy", "gaussian" or "linear". */
export function suppress(boxes, scores, settings) {
  if (settings.method === "greedy") return greedyNms(boxes, scores, settings.iou_threshold);
  return softNms(boxes, scores, settings.method, settings.iou_threshold, settings.sigma, settings.score_threshold);
}

/** The same sentence as detlib.explorers.NMSExplorer.describe(). */
export function describe(result, settings, total) {
  const name =
    settings.method === "greedy"
      ? `greedy NMS at IoU ${settings.iou_threshold.toFixed(2)}`
      : settings.method === "gaussian"
        ? `Gaussian Soft-NMS, sigma ${settings.sigma.toFixed(2)}, score threshold ${settings.score_threshold.toFixed(2)}`
        : `linear Soft-NMS at IoU ${settings.iou_threshold.toFixed(2)}, score threshold ${settings.score_threshold.toFixed(2)}`;
  const shown = result.keep.slice(0, 8).map((i, k) => `${i} (${result.scores[k].toFixed(2)})`);
  const more = result.keep.length > 8 ? ", ..." : "";
  return `${name} keeps ${result.keep.length} of ${total} boxes: ${shown.join(", ")}${more}`;
}

// ------------------------------------------------------------------ drawing
const COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

function draw(svg, boxes, scores, result, width, height) {
  svg.setAttribute("viewBox", `-10 -10 ${width + 20} ${height + 20}`);
  svg.replaceChildren();
  svg.append(svgElement("rect", { x: 0, y: 0, width, height, fill: "none", stroke: "black", "stroke-width": 1.5 }));
  const removed = svgElement("g", { fill: "none", stroke: "#b0b0b0", "stroke-width": 0.8, "stroke-dasharray": "3 2", class: "removed" });
  const keptSet = new Set(result.keep);
  boxes.forEach(([x1, y1, x2, y2], i) => {
    if (!keptSet.has(i)) removed.append(svgElement("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1 }));
  });
  svg.append(removed);
  const kept = svgElement("g", { fill: "none", "stroke-width": 2, class: "kept" });
  result.keep.forEach((i, k) => {
    const [x1, y1, x2, y2] = boxes[i];
    const colour = COLOURS[k % COLOURS.length];
    const opacity = Math.max(0.25, Math.min(1, result.scores[k] / Math.max(scores[i], 1e-12)));
    kept.append(svgElement("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: colour, "stroke-opacity": opacity }));
    const label = svgElement("text", { x: x1 + 2, y: y1 + 11, fill: colour, "font-size": 10, "font-weight": 600 });
    label.textContent = `#${k + 1} ${result.scores[k].toFixed(2)}`;
    kept.append(label);
  });
  svg.append(kept);
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-nms-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-nms-report";
  const note = document.createElement("div");
  note.className = "detlib-ex-note";
  note.textContent = "Kept boxes are numbered in the order they are picked; dashed grey boxes were removed.";
  const svg = svgElement("svg", { class: "detlib-ex-canvas", width: "100%", preserveAspectRatio: "xMidYMid meet" });

  const update = (name, value) => {
    setAndSync(model, name, value);
    redraw();
  };
  const methodRow = document.createElement("label");
  methodRow.className = "detlib-ex-row";
  const methodSelect = document.createElement("select");
  methodSelect.name = "method";
  for (const [value, text] of [["greedy", "greedy NMS"], ["gaussian", "Soft-NMS, Gaussian"], ["linear", "Soft-NMS, linear"]]) {
    methodSelect.append(Object.assign(document.createElement("option"), { value, textContent: text }));
  }
  methodSelect.addEventListener("change", () => update("method", methodSelect.value));
  methodRow.append(Object.assign(document.createElement("span"), { textContent: "method" }), methodSelect);
  controls.append(methodRow);
  const sliders = {};
  for (const [label, name, min, max, step] of [
    ["IoU threshold", "iou_threshold", 0, 1, 0.05],
    ["sigma (Gaussian)", "sigma", 0.05, 1.5, 0.05],
    ["score threshold (soft)", "score_threshold", 0, 0.9, 0.05],
  ]) {
    sliders[name] = slider(label, name, min, max, step, update);
    controls.append(sliders[name].row);
  }

  function redraw() {
    const method = model.get("method");
    methodSelect.value = method;
    for (const [name, s] of Object.entries(sliders)) {
      s.input.value = model.get(name);
      s.value.textContent = Number(model.get(name)).toFixed(2);
    }
    sliders.iou_threshold.row.style.opacity = method === "gaussian" ? 0.45 : 1;
    sliders.sigma.row.style.opacity = method === "gaussian" ? 1 : 0.45;
    sliders.score_threshold.row.style.opacity = method === "greedy" ? 0.45 : 1;
    const settings = {
      method,
      iou_threshold: model.get("iou_threshold"),
      sigma: model.get("sigma"),
      score_threshold: model.get("score_threshold"),
    };
    const boxes = model.get("boxes");
    const scores = model.get("scores");
    const result = suppress(boxes, scores, settings);
    report.textContent = describe(result, settings, boxes.length);
    draw(svg, boxes, scores, result, model.get("image_width"), model.get("image_height"));
  }

  root.append(controls, report, note, svg);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
