// Helpers shared by every explorer: SVG elements, sliders, and syncing a change with the kernel.
//
// anywidget loads each widget's module from a string, which cannot import a neighbouring file,
// so detlib prepends this file to each explorer's module (detlib.widgets.explorer_module).

const SVG = "http://www.w3.org/2000/svg";

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

function setAndSync(model, name, value) {
  model.set(name, value);
  try {
    model.save_changes(); // sends the change to the kernel, when there is one
  } catch (error) {
    // The static book has no kernel: the widget keeps working on its own state.
  }
}

// A labelled range input; the explorer's redraw sets its position and shown value from the model.
function slider(label, name, min, max, step, onChange, className = "detlib-ex-row") {
  const row = document.createElement("label");
  row.className = className;
  const span = document.createElement("span");
  span.textContent = label;
  const input = document.createElement("input");
  Object.assign(input, { type: "range", min, max, step, name });
  const value = document.createElement("output");
  input.addEventListener("input", () => onChange(name, Number(input.value)));
  row.append(span, input, value);
  return { row, input, value };
}

