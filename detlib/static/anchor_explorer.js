// The anchor explorer, computed in the browser: it works in Jupyter, Colab, VS Code and in the
// static HTML book, where there is no kernel. The anchor arithmetic is detlib.AnchorGenerator's,
// operation for operation in float64 (tests/test_widgets_js.py checks it, bit for bit, under node).
// The octave scales 2**(k/n) come from Python (`scale_table`): JavaScript's ** can differ from
// the C library's pow in the last bit.
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.

export const RATIO_CHOICES = [0.25, 1 / 3, 0.5, 1, 2, 3, 4];
/** The settings the explorer opens with and returns to on "Reset" (AnchorExplorer's defaults). */
export const DEFAULTS = {
  size_factor: 4, level_low: 3, level_high: 7, shown_level: 5,
  ratios: [0.5, 1, 2], scales_per_octave: 3, image_size: 512,
};
export const THRESHOLD = 0.5;
/** One colour per aspect ratio (the ratio's place in RATIO_CHOICES), one dash per octave scale. */
export const RATIO_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
export const SCALE_DASHES = ["", "6 3", "2 2", "8 3 2 3"];
const COVERED = "#1a9850";
const MISSED = "#d73027";

// ------------------------------------------------------------------ anchor arithmetic
/** The pyramid levels of the settings: [{level, stride, sizes, ratios}]. */
export function pyramid(settings, scaleTable) {
  const scales = scaleTable[String(settings.scales_per_octave)];
  const levels = [];
  for (let level = settings.level_low; level <= settings.level_high; level++) {
    const stride = 2 ** level; // exact for integer powers of two
    const sizes = scales.map((s) => settings.size_factor * stride * s);
    levels.push({ level, stride, sizes, ratios: [...settings.ratios] });
  }
  return levels;
}

/** Cell anchors centred on (0, 0), ratio-major: [[x1, y1, x2, y2], ...]. */
export function cellAnchors(sizes, ratios) {
  const cells = [];
  for (const ratio of ratios) {
    for (const size of sizes) {
      const width = Math.sqrt((size * size) / ratio); // keeps the area of a size x size square
      const height = width * ratio;
      const halfW = width * 0.5;
      const halfH = height * 0.5;
      cells.push([-halfW, -halfH, halfW, halfH]);
    }
  }
  return cells;
}

/** Cells per side of a level's grid: ceil(imageSize / stride). */
export function gridSize(imageSize, stride) {
  return Math.ceil(imageSize / stride);
}

/** Every anchor of one level of a square image, row by row, column by column, anchor by anchor. */
export function levelAnchors(level, imageSize) {
  const cells = cellAnchors(level.sizes, level.ratios);
  const n = gridSize(imageSize, level.stride);
  const out = [];
  for (let i = 0; i < n; i++) {
    const cy = (i + 0.5) * level.stride;
    for (let j = 0; j < n; j++) {
      const cx = (j + 0.5) * level.stride;
      for (const [x1, y1, x2, y2] of cells) out.push([cx + x1, cy + y1, cx + x2, cy + y2]);
    }
  }
  return out;
}

export function countAnchors(levels, imageSize) {
  return levels.map((l) => gridSize(imageSize, l.stride) ** 2 * l.sizes.length * l.ratios.length);
}

/** IoU of a box with an anchor, with detlib.box_iou's operations: union = (area + area) - inter. */
function iou(box, boxArea, ax1, ay1, ax2, ay2) {
  const w = Math.max(Math.min(box[2], ax2) - Math.max(box[0], ax1), 0);
  const h = Math.max(Math.min(box[3], ay2) - Math.max(box[1], ay1), 0);
  const inter = w * h;
  return inter / (boxArea + (ax2 - ax1) * (ay2 - ay1) - inter);
}

/** Best IoU of a box over every anchor of the pyramid. Only cells whose anchors can reach the box
 * are visited: an anchor that does not overlap the box has IoU 0 and cannot change the maximum. */
export function bestIoU(box, levels, imageSize) {
  const boxArea = (box[2] - box[0]) * (box[3] - box[1]);
  let best = 0;
  for (const level of levels) {
    const cells = cellAnchors(level.sizes, level.ratios);
    const reachX = Math.max(...cells.map((c) => c[2]));
    const reachY = Math.max(...cells.map((c) => c[3]));
    const n = gridSize(imageSize, level.stride);
    const s = level.stride;
    const j0 = Math.max(0, Math.floor((box[0] - reachX) / s - 0.5) - 1);
    const j1 = Math.min(n - 1, Math.ceil((box[2] + reachX) / s - 0.5) + 1);
    const i0 = Math.max(0, Math.floor((box[1] - reachY) / s - 0.5) - 1);
    const i1 = Math.min(n - 1, Math.ceil((box[3] + reachY) / s - 0.5) + 1);
    for (let i = i0; i <= i1; i++) {
      const cy = (i + 0.5) * s;
      for (let j = j0; j <= j1; j++) {
        const cx = (j + 0.5) * s;
        for (const [x1, y1, x2, y2] of cells) {
          const value = iou(box, boxArea, cx + x1, cy + y1, cx + x2, cy + y2);
          if (value > best) best = value;
        }
      }
    }
  }
  return best;
}

/** Boxes stored as fractions of the image side, scaled to an image of imageSize pixels. */
export function scaleBoxes(fractions, imageSize) {
  return fractions.map((b) => b.map((v) => v * imageSize));
}

export function coverage(boxes, levels, imageSize, threshold = 0.5) {
  const best = boxes.map((b) => bestIoU(b, levels, imageSize));
  const covered = best.filter((v) => v >= threshold).length;
  const mean = best.reduce((a, b) => a + b, 0) / Math.max(best.length, 1);
  return { best, coverage: boxes.length ? covered / boxes.length : 0, meanBestIoU: mean };
}

/** A level bound moved to `value`, kept on its side of the other bound: low <= high always. */
export function clampLevel(name, value, low, high) {
  if (name === "level_low") return Math.min(value, high);
  if (name === "level_high") return Math.max(value, low);
  return value;
}

/** Colour and dash of the anchor with the given ratio and octave-scale index (for the legend). */
export function anchorStyle(ratio, scaleIndex) {
  const k = RATIO_CHOICES.findIndex((r) => Math.abs(r - ratio) < 1e-9);
  return { colour: RATIO_COLOURS[k < 0 ? 0 : k], dash: SCALE_DASHES[scaleIndex % SCALE_DASHES.length] };
}

/** The same sentence as detlib.widgets.CoverageSummary.describe(). */
export function describe(counts, cov, threshold = 0.5) {
  const total = counts.reduce((a, b) => a + b, 0);
  const fmt = (n) => n.toLocaleString("en-US");
  return (
    `${fmt(total)} anchors (${counts.map(fmt).join(" + ")}); ` +
    `${(100 * cov.coverage).toFixed(1)}% of the boxes have an anchor with IoU >= ${threshold}, ` +
    `mean best IoU ${cov.meanBestIoU.toFixed(3)}`
  );
}

// ------------------------------------------------------------------ drawing
function drawScene(svg, model, levels, boxes, best) {
  const imageSize = model.get("image_size");
  const margin = imageSize * 0.12;
  svg.setAttribute("viewBox", `${-margin} ${-margin} ${imageSize + 2 * margin} ${imageSize + 2 * margin}`);
  svg.replaceChildren();
  const stroke = imageSize / 400;
  const shown = levels.find((l) => l.level === model.get("shown_level")) || levels[levels.length - 1];
  const n = gridSize(imageSize, shown.stride);
  const grid = svgElement("g", { stroke: "#d9d9d9", "stroke-width": stroke, class: "grid" });
  for (let k = 0; k <= n; k++) {
    const v = Math.min(k * shown.stride, imageSize);
    grid.append(svgElement("line", { x1: v, y1: 0, x2: v, y2: imageSize }));
    grid.append(svgElement("line", { x1: 0, y1: v, x2: imageSize, y2: v }));
  }
  svg.append(grid);
  svg.append(svgElement("rect", { x: 0, y: 0, width: imageSize, height: imageSize, fill: "none", stroke: "black", "stroke-width": 2 * stroke }));
  // The first 40 sample boxes: green when an anchor reaches IoU >= 0.5, red and dashed when none does.
  const sample = svgElement("g", { fill: "none", "stroke-width": 1.5 * stroke, class: "boxes" });
  boxes.slice(0, 40).forEach(([x1, y1, x2, y2], k) => {
    const covered = best[k] >= THRESHOLD;
    sample.append(svgElement("rect", {
      x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: covered ? "covered" : "missed",
      stroke: covered ? COVERED : MISSED, "stroke-dasharray": covered ? "" : `${4 * stroke} ${3 * stroke}`,
    }));
  });
  svg.append(sample);
  const centre = (Math.floor(n / 2) + 0.5) * shown.stride;
  const anchors = svgElement("g", { fill: "none", "stroke-width": 2.5 * stroke, class: "anchors" });
  cellAnchors(shown.sizes, shown.ratios).forEach(([x1, y1, x2, y2], k) => {
    // cellAnchors is ratio-major: anchor k has ratio k / #sizes and scale k % #sizes.
    const ratio = shown.ratios[Math.floor(k / shown.sizes.length)];
    const style = anchorStyle(ratio, k % shown.sizes.length);
    anchors.append(svgElement("rect", {
      x: centre + x1, y: centre + y1, width: x2 - x1, height: y2 - y1, stroke: style.colour,
      "stroke-dasharray": style.dash.split(" ").filter(Boolean).map((d) => d * stroke).join(" "),
      "data-ratio": ratio, "data-scale": k % shown.sizes.length,
    }));
  });
  svg.append(anchors);
  svg.append(svgElement("circle", { cx: centre, cy: centre, r: 3 * stroke, fill: "#d62728" }));
  return shown;
}

/** The legend: a colour per ratio, a dash per octave scale, and the sample boxes' two colours. */
function drawLegend(legend, model) {
  legend.replaceChildren();
  const n = model.get("scales_per_octave");
  const scales = model.get("scale_table")[String(n)] || [];
  const item = (label, stroke, dash, cls) => {
    const entry = document.createElement("span");
    entry.className = `detlib-ae-legend-item ${cls}`;
    const swatch = svgElement("svg", { width: 28, height: 12, "aria-hidden": "true" });
    swatch.append(svgElement("line", { x1: 1, y1: 6, x2: 27, y2: 6, stroke, "stroke-width": 2.5, "stroke-dasharray": dash }));
    entry.append(swatch, document.createTextNode(label));
    return entry;
  };
  const row = (title, items) => {
    const line = document.createElement("div");
    line.append(Object.assign(document.createElement("span"), { className: "detlib-ae-legend-title", textContent: title }), ...items);
    legend.append(line);
  };
  row("ratio h/w (colour):", model.get("ratios").map((r) => item(`${Number(r.toPrecision(3))}`, anchorStyle(r, 0).colour, "", "ratio")));
  row("scale (line):", scales.map((s, k) => item(`×${s.toFixed(2)} (2^${k}/${n})`, "#444", SCALE_DASHES[k % SCALE_DASHES.length], "scale")));
  row("sample boxes:", [item(`covered (best IoU ≥ ${THRESHOLD})`, COVERED, "", "covered"), item("missed", MISSED, "4 3", "missed")]);
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-anchor-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ae-controls";
  const report = document.createElement("div");
  report.className = "detlib-ae-report";
  const title = document.createElement("div");
  title.className = "detlib-ae-title";
  const svg = svgElement("svg", { class: "detlib-ae-canvas", width: "100%", preserveAspectRatio: "xMidYMid meet" });

  const sliders = {};
  const update = (name, value) => {
    // The two bounds cannot cross: a bound dragged past the other stops at it.
    setAndSync(model, name, clampLevel(name, value, model.get("level_low"), model.get("level_high")));
    redraw();
  };
  for (const [label, name, min, max, step] of [
    ["size / stride", "size_factor", 1, 8, 0.5],
    ["lowest level", "level_low", 2, 7, 1],
    ["highest level", "level_high", 2, 7, 1],
    ["level drawn", "shown_level", 2, 7, 1],
    ["scales per octave", "scales_per_octave", 1, 4, 1],
    ["image size", "image_size", 128, 1024, 64],
  ]) {
    sliders[name] = slider(label, name, min, max, step, update, "detlib-ae-row");
    controls.append(sliders[name].row);
  }
  const ratioRow = document.createElement("div");
  ratioRow.className = "detlib-ae-row detlib-ae-ratios";
  ratioRow.append(Object.assign(document.createElement("span"), { textContent: "ratios h/w" }));
  for (const ratio of RATIO_CHOICES) {
    const box = Object.assign(document.createElement("input"), { type: "checkbox", value: ratio });
    box.checked = model.get("ratios").some((r) => Math.abs(r - ratio) < 1e-9);
    box.addEventListener("change", () => {
      const chosen = RATIO_CHOICES.filter((r, k) => ratioRow.querySelectorAll("input")[k].checked);
      if (chosen.length === 0) {
        box.checked = true; // the last ratio stays: a pyramid needs at least one
        note.textContent = "At least one ratio is needed.";
        return;
      }
      note.textContent = "";
      update("ratios", chosen);
    });
    const label = document.createElement("label");
    label.append(box, ` ${Number(ratio.toPrecision(3))}`);
    ratioRow.append(label);
  }
  const note = Object.assign(document.createElement("span"), { className: "detlib-ae-note" });
  ratioRow.append(note);
  controls.append(ratioRow);
  const reset = Object.assign(document.createElement("button"), {
    type: "button", className: "detlib-ae-reset", textContent: "Reset",
    title: "Back to RetinaNet's pyramid on a 512-pixel image",
  });
  reset.addEventListener("click", () => {
    for (const [name, value] of Object.entries(DEFAULTS)) setAndSync(model, name, Array.isArray(value) ? [...value] : value);
    note.textContent = "";
    redraw();
  });
  controls.append(reset);
  const legend = Object.assign(document.createElement("div"), { className: "detlib-ae-legend" });

  function redraw() {
    for (const [name, s] of Object.entries(sliders)) {
      s.input.value = model.get(name);
      s.value.textContent = model.get(name);
    }
    const low = model.get("level_low");
    const high = model.get("level_high");
    sliders.level_low.input.max = high; // the bounds cannot cross
    sliders.level_high.input.min = low;
    sliders.level_low.input.value = low;
    sliders.level_high.input.value = high;
    ratioRow.querySelectorAll("input").forEach((box, k) => {
      box.checked = model.get("ratios").some((r) => Math.abs(r - RATIO_CHOICES[k]) < 1e-9);
    });
    const shownLevel = Math.min(Math.max(model.get("shown_level"), low), high);
    if (shownLevel !== model.get("shown_level")) setAndSync(model, "shown_level", shownLevel);
    sliders.shown_level.input.min = low;
    sliders.shown_level.input.max = high;
    sliders.shown_level.input.value = shownLevel;
    sliders.shown_level.value.textContent = shownLevel;
    if (model.get("ratios").length === 0 || low > high) {
      // Only a kernel can get here (the controls forbid both): draw nothing and say why.
      report.textContent = low > high
        ? `No anchors: the lowest level (${low}) is above the highest (${high}).`
        : "No anchors: no aspect ratio is selected.";
      title.textContent = "";
      svg.replaceChildren();
      legend.replaceChildren();
      return;
    }
    const imageSize = model.get("image_size");
    const levels = pyramid(
      {
        size_factor: model.get("size_factor"), level_low: low, level_high: high,
        ratios: model.get("ratios"), scales_per_octave: model.get("scales_per_octave"),
      },
      model.get("scale_table"),
    );
    const boxes = scaleBoxes(model.get("boxes"), imageSize);
    const cov = coverage(boxes, levels, imageSize);
    report.textContent = describe(countAnchors(levels, imageSize), cov);
    const shown = drawScene(svg, model, levels, boxes, cov.best);
    drawLegend(legend, model);
    const perCell = shown.sizes.length * shown.ratios.length;
    title.textContent = `P${shown.level}: stride ${shown.stride}, ${perCell} anchors per cell (centre cell drawn)`;
  }

  root.append(controls, report, title, svg, legend);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
