// The IoU explorer (chapter 2), computed in the browser: it works in Jupyter, Colab and in the
// static HTML book, where there is no kernel. IoU, GIoU, DIoU and CIoU are detlib.box_iou's,
// generalized_box_iou's, distance_box_iou's and complete_box_iou's arithmetic in float64,
// operation for operation (tests/test_explorers_js.py compares them under node).
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.

export const MEASURES = ["IoU", "GIoU", "DIoU", "CIoU"];
const EPS = 1e-7; // detlib's (and torchvision's) eps of DIoU and CIoU

// ------------------------------------------------------------------ arithmetic
/** {IoU, GIoU, DIoU, CIoU} of boxes a and b, each [x1, y1, x2, y2]. */
export function measures(a, b) {
  const inter =
    Math.max(Math.min(a[2], b[2]) - Math.max(a[0], b[0]), 0) *
    Math.max(Math.min(a[3], b[3]) - Math.max(a[1], b[1]), 0);
  const union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
  const iou = inter / union;
  const enclosingW = Math.max(Math.max(a[2], b[2]) - Math.min(a[0], b[0]), 0);
  const enclosingH = Math.max(Math.max(a[3], b[3]) - Math.min(a[1], b[1]), 0);
  const enclosing = enclosingW * enclosingH;
  const giou = iou - (enclosing - union) / enclosing;
  const diagonal = enclosingW ** 2 + enclosingH ** 2 + EPS;
  const dx = (a[0] + a[2]) / 2 - (b[0] + b[2]) / 2;
  const dy = (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2;
  const diou = iou - (dx ** 2 + dy ** 2) / diagonal;
  const v = (4 / Math.PI ** 2) * (Math.atan((a[2] - a[0]) / (a[3] - a[1])) - Math.atan((b[2] - b[0]) / (b[3] - b[1]))) ** 2;
  const alpha = v / (1 - iou + v + EPS);
  return { IoU: iou, GIoU: giou, DIoU: diou, CIoU: diou - alpha * v };
}

/** Box b moved so that its centre is `offset` to the right of a's centre (b's y unchanged). */
export function shifted(a, b, offset) {
  const centre = (a[0] + a[2]) / 2 + offset;
  const half = (b[2] - b[0]) * 0.5;
  return [centre - half, b[1], centre + half, b[3]];
}

/** The offsets of the curves: `count` points from -range to range. */
export function offsets(range, count) {
  const out = [];
  for (let k = 0; k < count; k++) out.push(-range + (2 * range * k) / (count - 1));
  return out;
}

/** Each measure against the horizontal offset of b's centre from a's: {IoU: [...], ...}. */
export function curves(a, b, range, count) {
  const result = Object.fromEntries(MEASURES.map((m) => [m, []]));
  for (const t of offsets(range, count)) {
    const values = measures(a, shifted(a, b, t));
    for (const m of MEASURES) result[m].push(values[m]);
  }
  return result;
}

/** The same sentence as detlib.explorers.IoUExplorer.describe(). */
export function describe(values) {
  return MEASURES.map((m) => `${m} ${values[m].toFixed(4)}`).join(", ");
}

// ------------------------------------------------------------------ drawing
const COLOURS = { IoU: "#1f77b4", GIoU: "#ff7f0e", DIoU: "#2ca02c", CIoU: "#d62728" };

function drawScene(svg, a, b, width, height) {
  svg.setAttribute("viewBox", `-10 -10 ${width + 20} ${height + 20}`);
  svg.replaceChildren();
  svg.append(svgElement("rect", { x: 0, y: 0, width, height, fill: "none", stroke: "#888", "stroke-width": 1 }));
  const ex = [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.max(a[2], b[2]), Math.max(a[3], b[3])];
  svg.append(svgElement("rect", { x: ex[0], y: ex[1], width: ex[2] - ex[0], height: ex[3] - ex[1], fill: "none", stroke: "#999", "stroke-dasharray": "4 3", class: "enclosing" }));
  const ix = [Math.max(a[0], b[0]), Math.max(a[1], b[1]), Math.min(a[2], b[2]), Math.min(a[3], b[3])];
  if (ix[2] > ix[0] && ix[3] > ix[1]) {
    svg.append(svgElement("rect", { x: ix[0], y: ix[1], width: ix[2] - ix[0], height: ix[3] - ix[1], fill: "#9467bd", "fill-opacity": 0.35, class: "intersection" }));
  }
  const boxes = {};
  for (const [name, box, colour] of [["a", a, "#1f77b4"], ["b", b, "#d62728"]]) {
    const g = svgElement("g", { class: `box box-${name}` });
    g.append(svgElement("rect", { x: box[0], y: box[1], width: box[2] - box[0], height: box[3] - box[1], fill: colour, "fill-opacity": 0.08, stroke: colour, "stroke-width": 2, cursor: "move", "data-part": "body" }));
    g.append(svgElement("rect", { x: box[2] - 5, y: box[3] - 5, width: 10, height: 10, fill: colour, cursor: "nwse-resize", "data-part": "corner" }));
    const label = svgElement("text", { x: box[0] + 3, y: box[1] + 13, fill: colour, "font-size": 12, "font-weight": 600 });
    label.textContent = name === "a" ? "target" : "prediction";
    g.append(label);
    svg.append(g);
    boxes[name] = g;
  }
  svg.append(svgElement("line", { x1: (a[0] + a[2]) / 2, y1: (a[1] + a[3]) / 2, x2: (b[0] + b[2]) / 2, y2: (b[1] + b[3]) / 2, stroke: "#2ca02c", "stroke-dasharray": "2 2", class: "centres" }));
  return boxes;
}

function drawCurves(svg, a, b, range) {
  const W = 420;
  const H = 220;
  const pad = 30;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.replaceChildren();
  const px = (t) => pad + ((t + range) / (2 * range)) * (W - 2 * pad);
  const py = (v) => H - pad - ((v + 1) / 2) * (H - 2 * pad);
  const axes = svgElement("g", { stroke: "#999", "stroke-width": 1, class: "axes" });
  axes.append(svgElement("line", { x1: pad, y1: py(0), x2: W - pad, y2: py(0) }));
  axes.append(svgElement("line", { x1: px(0), y1: py(-1), x2: px(0), y2: py(1), "stroke-dasharray": "2 2" }));
  svg.append(axes);
  for (const [text, x, y, anchor] of [["1", pad - 4, py(1) + 4, "end"], ["0", pad - 4, py(0) + 4, "end"], ["-1", pad - 4, py(-1) + 4, "end"], [`-${range}`, px(-range), H - 8, "middle"], [`+${range}`, px(range), H - 8, "middle"], ["offset of the centres (x)", W / 2, H - 8, "middle"]]) {
    const label = svgElement("text", { x, y, "font-size": 10, fill: "#555", "text-anchor": anchor });
    label.textContent = text;
    svg.append(label);
  }
  const count = 161;
  const ts = offsets(range, count);
  const values = curves(a, b, range, count);
  const current = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2;
  const now = measures(a, b);
  MEASURES.forEach((m, k) => {
    const points = ts.map((t, i) => `${px(t).toFixed(2)},${py(values[m][i]).toFixed(2)}`).join(" ");
    svg.append(svgElement("polyline", { points, fill: "none", stroke: COLOURS[m], "stroke-width": 1.6, class: `curve curve-${m}` }));
    const legend = svgElement("text", { x: W - pad - 150 + 38 * k, y: 14, fill: COLOURS[m], "font-size": 11, "font-weight": 600 });
    legend.textContent = m;
    svg.append(legend);
    if (Math.abs(current) <= range) {
      svg.append(svgElement("circle", { cx: px(current), cy: py(now[m]), r: 3.5, fill: COLOURS[m], class: "marker" }));
    }
  });
  if (Math.abs(current) <= range) {
    svg.append(svgElement("line", { x1: px(current), y1: py(-1), x2: px(current), y2: py(1), stroke: "#333", "stroke-width": 0.8, class: "marker" }));
  }
}

// ------------------------------------------------------------------ controls
/** Box b from its centre and size. */
function fromCentre(cx, cy, w, h) {
  return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2];
}

function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-iou-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-iou-report";
  const note = document.createElement("div");
  note.className = "detlib-ex-note";
  note.textContent = "Drag a box to move it, its corner square to resize it. The plot: each measure as the prediction slides horizontally past the target (its current position marked).";
  const figures = document.createElement("div");
  figures.className = "detlib-ex-figures";
  const scene = svgElement("svg", { class: "detlib-ex-canvas detlib-iou-scene", width: 400, preserveAspectRatio: "xMidYMid meet" });
  const plot = svgElement("svg", { class: "detlib-ex-plot detlib-iou-curves", width: 420 });
  figures.append(scene, plot);

  const width = model.get("scene_width");
  const height = model.get("scene_height");
  const sliders = {};
  const boxB = () => model.get("box_b");
  const fromSliders = (name, value) => {
    const b = boxB();
    const parts = { b_cx: (b[0] + b[2]) / 2, b_cy: (b[1] + b[3]) / 2, b_w: b[2] - b[0], b_h: b[3] - b[1] };
    parts[name] = value;
    setAndSync(model, "box_b", fromCentre(parts.b_cx, parts.b_cy, parts.b_w, parts.b_h));
    redraw();
  };
  for (const [label, name, min, max, step] of [
    ["prediction: centre x", "b_cx", 0, width, 1],
    ["prediction: centre y", "b_cy", 0, height, 1],
    ["prediction: width", "b_w", 4, width, 1],
    ["prediction: height", "b_h", 4, height, 1],
  ]) {
    sliders[name] = slider(label, name, min, max, step, fromSliders);
    controls.append(sliders[name].row);
  }

  // Dragging: the body moves a box, the corner square resizes it (down to 4 pixels).
  let drag = null;
  scene.addEventListener("pointerdown", (event) => {
    const part = event.target.getAttribute("data-part");
    const group = event.target.closest("g.box");
    if (!part || !group) return;
    const name = group.classList.contains("box-a") ? "box_a" : "box_b";
    const matrix = scene.getScreenCTM().inverse();
    drag = { name, part, matrix, start: toScene(event, matrix), box: [...model.get(name)] };
    scene.setPointerCapture(event.pointerId);
  });
  scene.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const p = toScene(event, drag.matrix);
    const dx = p.x - drag.start.x;
    const dy = p.y - drag.start.y;
    const [x1, y1, x2, y2] = drag.box;
    const box = drag.part === "body" ? [x1 + dx, y1 + dy, x2 + dx, y2 + dy] : [x1, y1, Math.max(x2 + dx, x1 + 4), Math.max(y2 + dy, y1 + 4)];
    setAndSync(model, drag.name, box.map((v) => Math.round(v)));
    redraw();
  });
  scene.addEventListener("pointerup", () => {
    drag = null;
  });

  function toScene(event, matrix) {
    const point = scene.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    return point.matrixTransform(matrix);
  }

  function redraw() {
    const a = model.get("box_a");
    const b = model.get("box_b");
    const parts = { b_cx: (b[0] + b[2]) / 2, b_cy: (b[1] + b[3]) / 2, b_w: b[2] - b[0], b_h: b[3] - b[1] };
    for (const [name, s] of Object.entries(sliders)) {
      s.input.value = parts[name];
      s.value.textContent = String(Math.round(parts[name] * 10) / 10);
    }
    report.textContent = describe(measures(a, b));
    drawScene(scene, a, b, width, height);
    drawCurves(plot, a, b, model.get("curve_range"));
  }

  root.append(controls, report, note, figures);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
