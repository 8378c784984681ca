// The RoI pooling explorer (chapter 6), computed in the browser: it works in Jupyter, Colab and
// in the static HTML book, where there is no kernel. RoI Pool and RoI Align are detlib.roi_pool's
// and detlib.roi_align's arithmetic (torchvision's) on one channel, spatial scale 1, in float64;
// tests/test_explorers_js.py compares them under node with detlib on random RoIs and settings.
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.


// ------------------------------------------------------------------ arithmetic
/** C's round: half away from zero (Math.round rounds -2.5 to -2). */
export function roundHalfAway(v) {
  return Math.sign(v) * Math.floor(Math.abs(v) + 0.5);
}

/** RoI Pool's bins along one axis: [[start, end), ...] in whole cells, clamped to [0, size]. */
export function poolBins(low, high, bins, size) {
  const first = roundHalfAway(low);
  const last = roundHalfAway(high);
  const binSize = Math.max(last - first + 1, 1) / bins;
  const out = [];
  for (let p = 0; p < bins; p++) {
    const start = Math.min(Math.max(Math.floor(p * binSize) + first, 0), size);
    const end = Math.min(Math.max(Math.ceil((p + 1) * binSize) + first, 0), size);
    out.push([start, end]);
  }
  return out;
}

/** RoI Pool of one RoI on a [H][W] map: [bins][bins], the maximum of each bin (0 if empty). */
export function roiPool(map, roi, bins) {
  const rows = poolBins(roi[1], roi[3], bins, map.length);
  const cols = poolBins(roi[0], roi[2], bins, map[0].length);
  return rows.map(([top, bottom]) =>
    cols.map(([left, right]) => {
      if (bottom <= top || right <= left) return 0;
      let best = -Infinity;
      for (let y = top; y < bottom; y++) for (let x = left; x < right; x++) best = Math.max(best, map[y][x]);
      return best;
    }),
  );
}

/** RoI Align's geometry along one axis: {start, binSize, grid}. */
export function alignAxis(low, high, bins, samplingRatio, aligned) {
  const offset = aligned ? 0.5 : 0;
  const start = low - offset;
  let length = high - offset - start;
  if (!aligned) length = Math.max(length, 1);
  const binSize = length / bins;
  const grid = samplingRatio > 0 ? samplingRatio : Math.ceil(binSize);
  return { start, binSize, grid };
}

/** The sample positions of bin p: start + p * binSize + (s + 0.5) * binSize / grid. */
export function samplePositions(axis, p) {
  const out = [];
  for (let s = 0; s < axis.grid; s++) out.push(axis.start + p * axis.binSize + ((s + 0.5) * axis.binSize) / axis.grid);
  return out;
}

/** Bilinear weights of a position along an axis of `size` cells: [[cell, weight], ...]. */
function weights(v, size) {
  if (v < -1 || v > size) return [];
  let pos = Math.max(v, 0);
  let low = Math.floor(pos);
  let high = low + 1;
  if (low >= size - 1) {
    low = high = size - 1;
    pos = low;
  }
  const frac = pos - low;
  return [[low, 1 - frac], [high, frac]];
}

/** RoI Align of one RoI on a [H][W] map: [bins][bins]. */
export function roiAlign(map, roi, bins, samplingRatio, aligned) {
  const ay = alignAxis(roi[1], roi[3], bins, samplingRatio, aligned);
  const ax = alignAxis(roi[0], roi[2], bins, samplingRatio, aligned);
  const count = Math.max(ay.grid * ax.grid, 1);
  const out = [];
  for (let i = 0; i < bins; i++) {
    const row = [];
    const ys = samplePositions(ay, i).map((y) => weights(y, map.length));
    for (let j = 0; j < bins; j++) {
      const xs = samplePositions(ax, j).map((x) => weights(x, map[0].length));
      let total = 0;
      for (const wy of ys) {
        for (const wx of xs) {
          let value = 0;
          for (const [cy, fy] of wy) for (const [cx, fx] of wx) value += fy * fx * map[cy][cx];
          total += value;
        }
      }
      row.push(total / count);
    }
    out.push(row);
  }
  return out;
}

/** The same sentence as detlib.explorers.RoIExplorer.describe(). */
export function describe(pool, align, settings) {
  const grid = (m) => m.map((row) => row.map((v) => v.toFixed(2)).join(" ")).join(" | ");
  const sampling = settings.sampling_ratio > 0 ? `${settings.sampling_ratio} x ${settings.sampling_ratio} samples` : "adaptive sampling";
  return (
    `${settings.output_size} x ${settings.output_size} bins, ${sampling}, aligned ${settings.aligned ? "on" : "off"}: ` +
    `RoI Pool ${grid(pool)}; RoI Align ${grid(align)}`
  );
}

// ------------------------------------------------------------------ drawing
function shade(v, low, high) {
  const t = high > low ? (v - low) / (high - low) : 0.5;
  const c = Math.round(245 - 150 * t);
  return `rgb(${c}, ${c}, ${Math.round(255 - 90 * t)})`;
}

function heatmap(group, values, x0, y0, cell, low, high, fontSize, decimals) {
  values.forEach((row, i) =>
    row.forEach((v, j) => {
      group.append(svgElement("rect", { x: x0 + j * cell, y: y0 + i * cell, width: cell, height: cell, fill: shade(v, low, high), stroke: "#fff", "stroke-width": cell * 0.02 }));
      const t = svgElement("text", { x: x0 + (j + 0.5) * cell, y: y0 + (i + 0.6) * cell, "font-size": fontSize, "text-anchor": "middle", fill: "#333" });
      t.textContent = v.toFixed(decimals);
      group.append(t);
    }),
  );
}

function drawMap(svg, map, roi, settings, low, high) {
  const H = map.length;
  const W = map[0].length;
  svg.setAttribute("viewBox", `-0.6 -0.6 ${W + 1.2} ${H + 1.2}`);
  svg.replaceChildren();
  const cells = svgElement("g", { class: "map" });
  heatmap(cells, map, 0, 0, 1, low, high, 0.28, 1);
  svg.append(cells);
  const bins = settings.output_size;
  // RoI Pool: the quantised bins (whole cells), dashed orange.
  const rows = poolBins(roi[1], roi[3], bins, H);
  const cols = poolBins(roi[0], roi[2], bins, W);
  const pool = svgElement("g", { fill: "none", stroke: "#ff7f0e", "stroke-width": 0.05, "stroke-dasharray": "0.15 0.1", class: "pool-bins" });
  for (const [top, bottom] of rows) for (const [left, right] of cols) {
    if (bottom > top && right > left) pool.append(svgElement("rect", { x: left + 0.06, y: top + 0.06, width: right - left - 0.12, height: bottom - top - 0.12 }));
  }
  svg.append(pool);
  // RoI Align samples in coordinates where cell (i, j) holds its value at (j, i); drawn at +0.5.
  const ay = alignAxis(roi[1], roi[3], bins, settings.sampling_ratio, settings.aligned);
  const ax = alignAxis(roi[0], roi[2], bins, settings.sampling_ratio, settings.aligned);
  const shift = 0.5; // map coordinates of a sample: cell (i, j) has its centre at (j + 0.5, i + 0.5)
  const align = svgElement("g", { fill: "none", stroke: "#1f77b4", "stroke-width": 0.04, class: "align-bins" });
  for (let p = 0; p <= bins; p++) {
    const y = ay.start + p * ay.binSize + shift;
    const x = ax.start + p * ax.binSize + shift;
    align.append(svgElement("line", { x1: ax.start + shift, y1: y, x2: ax.start + bins * ax.binSize + shift, y2: y }));
    align.append(svgElement("line", { x1: x, y1: ay.start + shift, x2: x, y2: ay.start + bins * ay.binSize + shift }));
  }
  svg.append(align);
  const points = svgElement("g", { fill: "#1f77b4", class: "samples" });
  for (let i = 0; i < bins; i++) for (let j = 0; j < bins; j++) {
    for (const y of samplePositions(ay, i)) for (const x of samplePositions(ax, j)) {
      points.append(svgElement("circle", { cx: x + shift, cy: y + shift, r: 0.06 }));
    }
  }
  svg.append(points);
  const box = svgElement("g", { class: "roi" });
  // The RoI in box coordinates, where cell j spans [j, j + 1): without `aligned`, RoI Align samples
  // half a cell to the right of and below it (the misalignment the chapter measures).
  box.append(svgElement("rect", { x: roi[0], y: roi[1], width: roi[2] - roi[0], height: roi[3] - roi[1], fill: "#d62728", "fill-opacity": 0.06, stroke: "#d62728", "stroke-width": 0.06, cursor: "move", "data-part": "body" }));
  box.append(svgElement("rect", { x: roi[2] - 0.15, y: roi[3] - 0.15, width: 0.3, height: 0.3, fill: "#d62728", cursor: "nwse-resize", "data-part": "corner" }));
  svg.append(box);
}

function drawOutputs(svg, pool, align, low, high) {
  const n = pool.length;
  const cell = 1;
  const gap = 1.2;
  svg.setAttribute("viewBox", `-0.2 -1 ${2 * n * cell + gap + 0.4} ${n * cell + 1.2}`);
  svg.replaceChildren();
  for (const [title, values, x0, cls] of [["RoI Pool", pool, 0, "out-pool"], ["RoI Align", align, n * cell + gap, "out-align"]]) {
    const g = svgElement("g", { class: cls });
    const t = svgElement("text", { x: x0, y: -0.3, "font-size": Math.min(0.5, 0.12 * n + 0.25), fill: title === "RoI Pool" ? "#ff7f0e" : "#1f77b4", "font-weight": 600 });
    t.textContent = title;
    g.append(t);
    heatmap(g, values, x0, 0, cell, low, high, 0.26, 2);
    svg.append(g);
  }
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-roi-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-roi-report";
  const note = document.createElement("div");
  note.className = "detlib-ex-note";
  note.textContent = "Drag the red RoI (in feature-map cells) or its corner. Blue: RoI Align's bins and sampling points; dashed orange: RoI Pool's bins, rounded to whole cells.";
  const figures = document.createElement("div");
  figures.className = "detlib-ex-figures";
  const mapSvg = svgElement("svg", { class: "detlib-ex-canvas detlib-roi-map", width: 380 });
  const outSvg = svgElement("svg", { class: "detlib-ex-plot detlib-roi-outputs", width: 280 });
  figures.append(mapSvg, outSvg);
  const update = (name, value) => {
    setAndSync(model, name, value);
    redraw();
  };
  const sliders = {
    output_size: slider("output size", "output_size", 1, 7, 1, update),
    sampling_ratio: slider("sampling ratio (0: adaptive)", "sampling_ratio", 0, 4, 1, update),
  };
  controls.append(sliders.output_size.row, sliders.sampling_ratio.row);
  const alignedRow = document.createElement("label");
  alignedRow.className = "detlib-ex-row";
  const aligned = Object.assign(document.createElement("input"), { type: "checkbox", name: "aligned" });
  aligned.addEventListener("change", () => update("aligned", aligned.checked));
  alignedRow.append(Object.assign(document.createElement("span"), { textContent: "aligned (-0.5 cell)" }), aligned);
  controls.append(alignedRow);

  let drag = null;
  mapSvg.addEventListener("pointerdown", (event) => {
    const part = event.target.getAttribute("data-part");
    if (!part) return;
    const matrix = mapSvg.getScreenCTM().inverse();
    drag = { part, matrix, start: toMap(event, matrix), roi: [...model.get("roi")] };
    mapSvg.setPointerCapture(event.pointerId);
  });
  mapSvg.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const p = toMap(event, drag.matrix);
    const snap = (v) => Math.round(v * 10) / 10; // tenths of a cell
    const dx = p.x - drag.start.x;
    const dy = p.y - drag.start.y;
    const [x1, y1, x2, y2] = drag.roi;
    const roi = drag.part === "body" ? [x1 + dx, y1 + dy, x2 + dx, y2 + dy] : [x1, y1, Math.max(x2 + dx, x1 + 0.2), Math.max(y2 + dy, y1 + 0.2)];
    setAndSync(model, "roi", roi.map(snap));
    redraw();
  });
  mapSvg.addEventListener("pointerup", () => {
    drag = null;
  });
  function toMap(event, matrix) {
    const point = mapSvg.createSVGPoint();
    point.x = event.clientX;
    point.y = event.clientY;
    return point.matrixTransform(matrix);
  }

  function redraw() {
    const settings = { output_size: model.get("output_size"), sampling_ratio: model.get("sampling_ratio"), aligned: model.get("aligned") };
    for (const [name, s] of Object.entries(sliders)) {
      s.input.value = settings[name];
      s.value.textContent = name === "sampling_ratio" && settings[name] <= 0 ? "auto" : String(settings[name]);
    }
    aligned.checked = settings.aligned;
    const map = model.get("feature");
    const roi = model.get("roi");
    const flat = map.flat();
    const low = Math.min(...flat);
    const high = Math.max(...flat);
    const pool = roiPool(map, roi, settings.output_size);
    const align = roiAlign(map, roi, settings.output_size, settings.sampling_ratio, settings.aligned);
    report.textContent = `RoI (${roi.map((v) => v.toFixed(1)).join(", ")}), ` + describe(pool, align, settings);
    drawMap(mapSvg, map, roi, settings, low, high);
    drawOutputs(outSvg, pool, align, low, high);
  }

  root.append(controls, report, note, figures);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
