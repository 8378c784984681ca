// The matching explorer (chapter 3), computed in the browser: it works in Jupyter, Colab and in
// the static HTML book, where there is no kernel. Anchors, IoUs and the four matching strategies
// are detlib's (AnchorGenerator, box_iou, Matcher, ssd_match, greedy_match) in float64, operation
// for operation; tests/test_explorers_js.py compares them under node.
// Its helpers (svgElement, setAndSync, slider) are in explorer_kit.js, which detlib puts in front.

export const STRATEGIES = {
  retinanet: { label: "RetinaNet (thresholds)", high: 0.5, low: 0.4 },
  rpn: { label: "RPN (+ low-quality matches)", high: 0.7, low: 0.3 },
  ssd: { label: "SSD (best anchor, then threshold)", high: 0.5, low: null },
  greedy: { label: "greedy one-to-one, then threshold", high: 0.5, low: null },
};

// ------------------------------------------------------------------ arithmetic
/** All anchors of a square image: level, row, column, anchor (detlib.AnchorGenerator, ratio-major). */
export function anchors(pyramid, imageSize) {
  const out = [];
  pyramid.strides.forEach((stride, level) => {
    const cells = [];
    for (const ratio of pyramid.ratios) {
      for (const size of pyramid.sizes[level]) {
        const width = Math.sqrt((size * size) / ratio);
        const height = width * ratio;
        cells.push([-width * 0.5, -height * 0.5, width * 0.5, height * 0.5]);
      }
    }
    const n = Math.ceil(imageSize / stride);
    for (let i = 0; i < n; i++) {
      const cy = (i + 0.5) * stride;
      for (let j = 0; j < n; j++) {
        const cx = (j + 0.5) * stride;
        for (const [x1, y1, x2, y2] of cells) out.push([cx + x1, cy + y1, cx + x2, cy + y2]);
      }
    }
  });
  return out;
}

/** IoU matrix [G][N] with detlib.box_iou's operations. */
export function iouMatrix(boxes, anchorList) {
  return boxes.map((b) => {
    const areaB = (b[2] - b[0]) * (b[3] - b[1]);
    return anchorList.map((a) => {
      const w = Math.max(Math.min(b[2], a[2]) - Math.max(b[0], a[0]), 0);
      const h = Math.max(Math.min(b[3], a[3]) - Math.max(b[1], a[1]), 0);
      const inter = w * h;
      return inter / (areaB + (a[2] - a[0]) * (a[3] - a[1]) - inter);
    });
  });
}

/** Each anchor's best box (the first on ties) and its IoU. */
function bestBoxes(iou, numAnchors) {
  const best = new Array(numAnchors).fill(-Infinity);
  const gt = new Array(numAnchors).fill(0);
  iou.forEach((row, g) => {
    for (let n = 0; n < numAnchors; n++) {
      if (row[n] > best[n]) {
        best[n] = row[n];
        gt[n] = g;
      }
    }
  });
  return { best, gt };
}

function rowMax(row) {
  let best = -Infinity;
  let index = 0;
  row.forEach((v, n) => {
    if (v > best) {
      best = v;
      index = n;
    }
  });
  return { best, index };
}

/** detlib.Matcher(high, low, allowLowQuality): box index, -1 (negative) or -2 (ignored). */
export function matcher(iou, numAnchors, high, low, allowLowQuality) {
  if (iou.length === 0) return new Array(numAnchors).fill(-1);
  const { best, gt } = bestBoxes(iou, numAnchors);
  const matches = best.map((v, n) => (v < low ? -1 : v < high ? -2 : gt[n]));
  if (allowLowQuality) {
    for (const row of iou) {
      const top = rowMax(row).best;
      if (!(top > 0)) continue; // a box that overlaps nothing forces no match
      row.forEach((v, n) => {
        if (v === top) matches[n] = gt[n];
      });
    }
  }
  return matches;
}

function thresholdMatches(iou, numAnchors, threshold) {
  const { best, gt } = bestBoxes(iou, numAnchors);
  return best.map((v, n) => (v >= threshold ? gt[n] : -1));
}

/** detlib.ssd_match: every box with a positive best IoU takes its best anchor (the last box wins). */
export function ssdMatch(iou, numAnchors, threshold) {
  if (iou.length === 0 || numAnchors === 0) return new Array(numAnchors).fill(-1);
  const matches = thresholdMatches(iou, numAnchors, threshold);
  const takenBy = new Array(numAnchors).fill(-1);
  iou.forEach((row, g) => {
    const { best, index } = rowMax(row);
    if (best > 0) takenBy[index] = Math.max(takenBy[index], g);
  });
  return matches.map((m, n) => (takenBy[n] >= 0 ? takenBy[n] : m));
}

/** detlib.greedy_match: largest IoU first, one anchor per box, then the threshold for the rest. */
export function greedyMatch(iou, numAnchors, threshold) {
  if (iou.length === 0 || numAnchors === 0) return new Array(numAnchors).fill(-1);
  const numGt = iou.length;
  const first = new Array(numAnchors).fill(-1);
  const rowDone = new Array(numGt).fill(false);
  const colDone = new Array(numAnchors).fill(false);
  for (let step = 0; step < Math.min(numGt, numAnchors); step++) {
    let best = -Infinity;
    let bestN = -1;
    let bestG = -1;
    for (let n = 0; n < numAnchors; n++) {
      if (colDone[n]) continue;
      for (let g = 0; g < numGt; g++) {
        if (!rowDone[g] && iou[g][n] > best) {
          best = iou[g][n];
          bestN = n;
          bestG = g;
        }
      }
    }
    if (bestN < 0) break;
    if (best > 0) first[bestN] = bestG;
    rowDone[bestG] = true;
    colDone[bestN] = true;
  }
  const rest = thresholdMatches(iou, numAnchors, threshold);
  return first.map((m, n) => (m >= 0 ? m : rest[n]));
}

/** The matches of a strategy: "retinanet", "rpn", "ssd" or "greedy". */
export function match(iou, numAnchors, settings) {
  const { strategy, high_threshold: high, low_threshold: low } = settings;
  if (strategy === "ssd") return ssdMatch(iou, numAnchors, high);
  if (strategy === "greedy") return greedyMatch(iou, numAnchors, high);
  return matcher(iou, numAnchors, high, Math.min(low, high), strategy === "rpn");
}

/** Counts: positives per box, and positive / ignored / negative anchors. */
export function summary(matches, numGt) {
  const perBox = new Array(numGt).fill(0);
  let ignored = 0;
  let negative = 0;
  for (const m of matches) {
    if (m >= 0) perBox[m] += 1;
    else if (m === -2) ignored += 1;
    else negative += 1;
  }
  return { perBox, positive: perBox.reduce((a, b) => a + b, 0), ignored, negative };
}

/** The same sentence as detlib.explorers.MatchingExplorer.describe(). */
export function describe(s, settings) {
  const fmt = (n) => n.toLocaleString("en-US");
  const { strategy, high_threshold: high, low_threshold: low } = settings;
  const rule =
    strategy === "ssd" || strategy === "greedy"
      ? `IoU >= ${high.toFixed(2)}`
      : `IoU >= ${high.toFixed(2)} positive, < ${Math.min(low, high).toFixed(2)} negative`;
  const missing = s.perBox.map((n, g) => (n === 0 ? g : -1)).filter((g) => g >= 0);
  const tail = missing.length ? ` No positive anchor for box ${missing.join(", ")}.` : " Every box has a positive anchor.";
  return (
    `${STRATEGIES[strategy].label}, ${rule}: ${fmt(s.positive)} positive, ${fmt(s.ignored)} ignored, ` +
    `${fmt(s.negative)} negative anchors; positives per box: ${s.perBox.join(", ")}.${tail}`
  );
}

// ------------------------------------------------------------------ drawing
const COLOURS = ["#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

function draw(svg, boxes, anchorList, matches, s, size) {
  svg.setAttribute("viewBox", `-8 -8 ${size + 16} ${size + 16}`);
  svg.replaceChildren();
  svg.append(svgElement("rect", { x: 0, y: 0, width: size, height: size, fill: "none", stroke: "black", "stroke-width": 1 }));
  const ignored = svgElement("g", { fill: "#ff7f0e", class: "ignored" });
  const positives = svgElement("g", { fill: "none", "stroke-width": 0.7, class: "positive" });
  matches.forEach((m, n) => {
    const [x1, y1, x2, y2] = anchorList[n];
    if (m === -2) ignored.append(svgElement("circle", { cx: (x1 + x2) / 2, cy: (y1 + y2) / 2, r: 1.2 }));
    else if (m >= 0) {
      positives.append(svgElement("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: COLOURS[m % COLOURS.length], "stroke-opacity": 0.7 }));
    }
  });
  svg.append(ignored, positives);
  const gts = svgElement("g", { fill: "none", class: "boxes" });
  boxes.forEach(([x1, y1, x2, y2], g) => {
    const empty = s.perBox[g] === 0;
    const colour = empty ? "#d62728" : COLOURS[g % COLOURS.length];
    gts.append(svgElement("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: colour, "stroke-width": empty ? 3 : 2, "stroke-dasharray": empty ? "5 3" : "none", class: empty ? "unmatched" : "matched" }));
    const below = g % 2 === 1 && y2 + 12 < size; // alternate above / below: neighbours stay legible
    const label = svgElement("text", { x: x1 + 2, y: below ? y2 + 10 : y1 - 3, fill: colour, "font-size": 10, "font-weight": 600 });
    label.textContent = empty ? `box ${g}: no anchor` : `box ${g}: ${s.perBox[g]}`;
    gts.append(label);
  });
  svg.append(gts);
}

// ------------------------------------------------------------------ controls
function render({ model, el }) {
  const root = document.createElement("div");
  root.className = "detlib-explorer detlib-matching-explorer";
  const controls = document.createElement("div");
  controls.className = "detlib-ex-controls";
  const report = document.createElement("div");
  report.className = "detlib-ex-report detlib-matching-report";
  const note = document.createElement("div");
  note.className = "detlib-ex-note";
  note.textContent = "Positive anchors are drawn in their box's colour, ignored anchors as orange dots at their centres; negatives are not drawn. A box without a positive anchor is dashed red.";
  const svg = svgElement("svg", { class: "detlib-ex-canvas", width: "100%", preserveAspectRatio: "xMidYMid meet" });

  const update = (name, value) => {
    setAndSync(model, name, value);
    redraw();
  };
  const strategyRow = document.createElement("label");
  strategyRow.className = "detlib-ex-row";
  const select = document.createElement("select");
  select.name = "strategy";
  for (const [value, s] of Object.entries(STRATEGIES)) {
    select.append(Object.assign(document.createElement("option"), { value, textContent: s.label }));
  }
  select.addEventListener("change", () => {
    const defaults = STRATEGIES[select.value];
    setAndSync(model, "high_threshold", defaults.high);
    if (defaults.low !== null) setAndSync(model, "low_threshold", defaults.low);
    update("strategy", select.value);
  });
  strategyRow.append(Object.assign(document.createElement("span"), { textContent: "strategy" }), select);
  controls.append(strategyRow);
  const sliders = {
    high_threshold: slider("positive from IoU", "high_threshold", 0.05, 0.95, 0.05, update),
    low_threshold: slider("negative below IoU", "low_threshold", 0.05, 0.95, 0.05, update),
  };
  controls.append(sliders.high_threshold.row, sliders.low_threshold.row);

  const size = model.get("image_size");
  const anchorList = anchors(model.get("pyramid"), size);
  let cachedBoxes = null;
  let iou = null;

  function redraw() {
    const strategy = model.get("strategy");
    select.value = strategy;
    for (const [name, s] of Object.entries(sliders)) {
      s.input.value = model.get(name);
      s.value.textContent = Number(model.get(name)).toFixed(2);
    }
    sliders.low_threshold.row.style.opacity = STRATEGIES[strategy].low === null ? 0.45 : 1;
    const boxes = model.get("boxes");
    if (boxes !== cachedBoxes) {
      iou = iouMatrix(boxes, anchorList);
      cachedBoxes = boxes;
    }
    const settings = { strategy, high_threshold: model.get("high_threshold"), low_threshold: model.get("low_threshold") };
    const matches = match(iou, anchorList.length, settings);
    const s = summary(matches, boxes.length);
    report.textContent = describe(s, settings);
    draw(svg, boxes, anchorList, matches, s, size);
  }

  root.append(controls, report, note, svg);
  el.append(root);
  redraw();
  const external = () => redraw();
  model.on("change", external);
  return () => model.off("change", external);
}

export default { render };
