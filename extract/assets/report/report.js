// report.html: draws the report from the JSON that extract/report_html.py inlined. No libraries, no network.
"use strict";

const DATA = JSON.parse(document.getElementById("report-data").textContent);
const SVG = "http://www.w3.org/2000/svg";
const ROW_HEIGHT = 34, NODE_GAP = 15, LEFT = 120, TOP = 24, RADIUS = 5;
const SITE_WORDS = {
  attn_in: "residual channel read by attention", q: "query channel", k: "key channel", v: "value channel",
  attn_out: "residual channel written by attention", mlp_in: "residual channel read by the MLP",
  mlp: "MLP neuron", mlp_out: "residual channel written by the MLP",
};

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else if (key === "onclick") node.onclick = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

function fmt(value, digits = 3) {
  return value === null || value === undefined ? "-" : Number(value).toFixed(digits);
}

function token(text) {  // a token as it reads, with line breaks and tabs shown
  return el("code", { class: "tok" }, text.replace(/\n/g, "⏎").replace(/\t/g, "⇥"));
}

function table(header, rows) {
  const head = el("tr", {}, ...header.map((h) => el("th", {}, h)));
  return el("table", {}, head, ...rows.map((row) => el("tr", {}, ...row.map((cell) =>
    cell instanceof Node ? el("td", { class: "text" }, cell) : el("td", {}, cell)))));
}

function renderHeader() {
  document.title = DATA.title;
  const root = document.getElementById("report");
  root.append(el("h1", {}, DATA.title), el("p", { class: "muted" }, `Recipe: ${DATA.recipe}. ${DATA.note}`));
  if (DATA.models.length) {
    root.append(el("h2", {}, "Models"), table(["model", "held-out loss", "density", "loss vs dense", "KL to dense",
      "closing-quote accuracy"], DATA.models.map((m) => [m.role, fmt(m.heldout_loss, 4), fmt(m.density, 5),
      m.loss_ratio ? fmt(m.loss_ratio) + "x" : "-", fmt(m.kl_to_dense, 4), fmt(m.quote_accuracy)])));
  }
  if (DATA.summary.length) {
    root.append(el("h2", {}, "Summary"), ...DATA.summary.map((line) => el("p", {}, line)));
  }
  if (DATA.table.length) {
    root.append(el("h2", {}, "Circuits"), el("p", { class: "muted" }, DATA.splits),
      table(["task", "model", "full model loss", "nodes", "edges", "circuit loss", "ablated loss",
        "checks"], DATA.table.map((row) => [
        row.anchor ? el("a", { href: "#" + row.anchor }, row.task) : el("span", {}, row.task), row.model,
        fmt(row.full_loss), row.nodes ?? "-", row.edges === undefined ? "-" : row.edges.toLocaleString("en"),
        fmt(row.loss), fmt(row.ablated_loss), el("span", { class: row.ok ? "" : "bad" }, row.verdict)])));
  }
  if (DATA.controls.rows.length) {
    root.append(el("h2", {}, "Controls"), el("p", { class: "muted" }, DATA.controls.note),
      table(["task", "model", ...DATA.controls.labels], DATA.controls.rows.map((row) => [row.task, row.model,
        ...row.cells.map((cell) => el("span", { class: cell.failed ? "bad" : "" }, cell.summary))])));
  }
  if (DATA.images.length) {
    root.append(el("h2", {}, "Plots"), el("div", { class: "images" }, ...DATA.images.map((image) =>
      el("figure", {}, el("img", { src: image.src, alt: image.title }), el("figcaption", {}, image.title)))));
  }
}

// One circuit: the graph (layers bottom to top, one row per site), the strongest-edges filter, the nodes
// the circuit leans on most, and the details of the selected node.
class CircuitView {
  constructor(circuit) {
    this.c = circuit;
    this.selected = null;
    this.shown = Math.min(circuit.edges.length, 400);
    this.section = el("section", { class: "circuit", id: circuit.anchor, "data-task": circuit.task,
      "data-model": circuit.model });
    this.layout();
    this.build();
  }

  layout() {
    const rows = this.c.rows, widest = Math.max(1, ...rows.map((row) => row.nodes.length));
    this.width = LEFT + widest * NODE_GAP + 30;
    this.height = TOP + rows.length * ROW_HEIGHT + 10;
    this.position = {};
    rows.forEach((row, r) => {
      const y = this.height - 20 - r * ROW_HEIGHT;  // layer 0 at the bottom
      const start = LEFT + (widest - row.nodes.length) * NODE_GAP / 2 + NODE_GAP / 2;
      row.nodes.forEach((id, slot) => { this.position[id] = [start + slot * NODE_GAP, y]; });
    });
  }

  build() {
    const c = this.c, head = `${c.task} on the ${c.model} model`;
    this.section.append(el("h2", {}, head), el("p", {}, `${c.node_count} nodes, ${c.edges.length.toLocaleString("en")} ` +
      `edges; test loss ${fmt(c.loss)} (target ${c.target}); ${c.verdict}.`));
    const label = el("span", {});
    const slider = el("input", { type: "range", min: 0, max: c.edges.length, value: this.shown, class: "edge-filter" });
    slider.oninput = () => { this.shown = Number(slider.value); this.drawEdges(); label.textContent = this.edgeLabel(); };
    this.label = label;
    label.textContent = this.edgeLabel();
    this.section.append(el("div", { class: "controls" }, "Strongest edges shown: ", slider, " ", label));
    const lean = el("div", { class: "lean" }, "Nodes the circuit leans on most (loss rise if removed alone): ");
    for (const id of c.leans_on) {
      lean.append(el("button", { onclick: () => this.select(id) }, `${id} (${fmt(c.descriptions[id]?.effect)})`));
    }
    this.section.append(lean);
    this.svg = svg("svg", { width: this.width, height: this.height, class: "circuit-graph" });
    this.edgeLayer = svg("g");
    const identity = svg("g"), nodes = svg("g");
    c.rows.forEach((row) => {
      const y = this.position[row.nodes[0]][1];
      const text = svg("text", { x: 6, y: y + 4 });
      text.textContent = row.key;
      nodes.append(text);
      for (const id of row.nodes) {
        const [x, cy] = this.position[id];
        const effect = Math.min(1, Math.abs(c.descriptions[id]?.effect ?? 0) / (c.max_effect || 1));
        const circle = svg("circle", { cx: x, cy, r: RADIUS, class: "node", "data-node": id,
          fill: `rgba(255, 140, 0, ${0.12 + 0.88 * effect})` });
        const title = svg("title");
        title.textContent = `${id}: ${c.descriptions[id]?.summary || "no description"}`;
        circle.append(title);
        circle.addEventListener("click", () => this.select(id));
        nodes.append(circle);
      }
    });
    for (const [from, to] of c.identity) {
      const [x1, y1] = this.position[from], [x2, y2] = this.position[to];
      identity.append(svg("line", { x1, y1, x2, y2, class: "identity" }));
    }
    this.svg.append(identity, this.edgeLayer, nodes);
    this.details = el("div", { class: "details" }, el("p", { class: "muted" },
      "Click a node (or hover for its summary). Orange: how much the circuit leans on it. Lines: weights " +
      "between kept nodes, blue positive, red negative, thicker stronger; dashed: the residual stream carrying " +
      "a written channel to a later read."));
    this.section.append(el("div", { class: "circuit-body" }, el("div", { class: "graph" }, this.svg), this.details));
    this.drawEdges();
  }

  edgeLabel() {
    return `${this.shown.toLocaleString("en")} of ${this.c.edges.length.toLocaleString("en")}`;
  }

  drawEdges() {
    const edges = this.c.edges.slice(0, this.shown), biggest = Math.abs(this.c.edges[0]?.[2] || 1);
    this.edgeLayer.replaceChildren(...edges.map(([from, to, weight]) => {
      const [x1, y1] = this.position[from], [x2, y2] = this.position[to];
      const near = this.selected && (from === this.selected || to === this.selected);
      return svg("line", { x1, y1, x2, y2, class: near ? "edge near" : "edge",
        stroke: weight > 0 ? "#1f77b4" : "#d62728", "stroke-width": 0.4 + 3 * Math.abs(weight) / biggest });
    }));
  }

  select(id) {
    this.selected = id;
    this.svg.classList.add("focused");
    for (const circle of this.svg.querySelectorAll(".node")) {
      circle.classList.toggle("selected", circle.dataset.node === id);
    }
    this.drawEdges();
    this.details.replaceChildren(...this.describe(id));
  }

  describe(id) {
    const d = this.c.descriptions[id] || {}, [site, index] = id.split(":"), name = site.split(".")[1];
    const out = [el("h3", { class: "node-title" }, id),
      el("p", { class: "muted" }, `Layer ${site.split(".")[0]}, ${SITE_WORDS[name] || name} ${index}. ` +
        `Loss rise if removed alone (first order): ${fmt(d.effect)}.`),
      el("p", { class: "node-summary" }, d.summary || "No description in the circuit file.")];
    const sides = d.sides;
    if (sides && sides.sides.length) {
      out.push(el("h4", {}, "At the last token, by side of the task's pairs"), table(["answers", "mean ± sd", "n"],
        sides.sides.map((s) => [el("span", {}, ...s.answers.map(token)), `${fmt(s.mean, 2)} ± ${fmt(s.std, 2)}`, s.n])),
        el("p", {}, `Separation: ${fmt(sides.separation, 2)} pooled sd.`));
    }
    if (d.logits) {
      out.push(el("h4", {}, "Pushes up (through the unembedding)"), el("p", {}, ...d.logits.up.map(([t, v]) =>
        el("span", {}, token(t), ` ${fmt(v, 2)}  `))), el("h4", {}, "Pushes down"),
        el("p", {}, ...d.logits.down.map(([t, v]) => el("span", {}, token(t), ` ${fmt(v, 2)}  `))));
    }
    if (d.attention) {
      out.push(el("h4", {}, `Head ${d.attention.heads.join("/")} from the last token, circuit alone`),
        table(["looks at", "tokens back", "share of prompts", "mean weight"], d.attention.looks_at.map((a) =>
          [token(a.token), a.distance, fmt(a.share, 2), fmt(a.weight, 2)])));
    }
    for (const [key, title] of [["task", "Strongest in the task's prompts"], ["corpus", "Strongest in held-out text"]]) {
      if (d[key] && d[key].length) {
        out.push(el("h4", {}, title), ...d[key].map((ctx) => el("div", { class: "context" }, ctx.before,
          el("mark", {}, ctx.token), ctx.after, el("span", { class: "muted" }, `  (${fmt(ctx.value, 2)})`))));
      }
    }
    const near = this.c.edges.filter(([from, to]) => from === id || to === id).slice(0, 16);
    out.push(el("h4", {}, `Edges (${near.length} strongest)`), ...near.map(([from, to, weight]) => {
      const other = from === id ? to : from;
      return el("div", {}, from === id ? "to " : "from ", el("button", { class: "edge-link",
        onclick: () => this.select(other) }, other), ` weight ${fmt(weight, 3)}`);
    }));
    return out;
  }
}

renderHeader();
const root = document.getElementById("report");
if (DATA.circuits.length) root.append(el("h2", {}, "Circuit graphs"));
for (const circuit of DATA.circuits) root.append(new CircuitView(circuit).section);
document.body.dataset.ready = "true";
