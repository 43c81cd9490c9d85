"""report.html: a run's report as one self-contained page to explore its circuits.

Everything is inlined (the data as JSON, the script, the style, the plots as PNG data), so the file
opens from disk or a Hub repo with no server and no network. The page shows the models and circuits
tables, the plots, and per circuit an interactive graph: layers bottom to top, one row per site, edges
coloured by sign and weighted by magnitude, the strongest shown first (a slider shows more), and each
node's description (extract/circuits/describe.py) on click. The page's code is
extract/assets/report/report.js; this module only gathers the data, from saved artifacts.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

from extract import atomic
from extract.arch import SITE_NAMES
from extract.circuits.describe import node_id
from extract.circuits.files import circuit_file
from extract.circuits.results import CircuitChecks
from extract.paths import ASSETS_DIR, CIRCUITS_DIRNAME
from extract.report_view import report_view

HTML_FILE = "report.html"
PAGE_DIR = ASSETS_DIR / "report"
LEANS_ON = 12  # nodes listed as the ones the circuit leans on most
READS, WRITES = ("attn_in", "mlp_in"), ("attn_out", "mlp_out")
PLOTS = ((f"{CIRCUITS_DIRNAME}/loss_vs_edges.png", "Task loss against circuit edges (test split)"),
         ("training.png", "Sparsification: loss and density over training"))
MODEL_FIELDS = ("heldout_loss", "density", "loss_ratio", "kl_to_dense", "quote_accuracy")

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Extraction report</title>
<style>
{css}
</style>
</head>
<body>
<div id="report"></div>
<script type="application/json" id="report-data">{data}</script>
<script>
{script}
</script>
</body>
</html>
"""


def write_html_report(out: Path, report: dict) -> Path:
    """Write OUTPUT_DIR/report.html for `report` (report.json's contents) and the run's circuit files."""
    # "<" escaped so no string in the data can close the script element it sits in
    data = json.dumps(page_data(out, report), separators=(",", ":")).replace("<", "\\u003c")
    page = TEMPLATE.format(css=(PAGE_DIR / "report.css").read_text(), data=data,
                           script=(PAGE_DIR / "report.js").read_text())
    path = Path(out) / HTML_FILE
    atomic.write_text_atomic(path, page)
    return path


def page_data(out: Path, report: dict) -> dict:
    out = Path(out)
    view = report_view(report)
    circuits, table = [], []
    for row in view.rows:
        path = out / CIRCUITS_DIRNAME / circuit_file(row.task, row.model)
        record = atomic.read_json(path, "rerun the command with --stage prune") if path.is_file() else None
        drawn = circuit_view(record, f"circuit-{len(circuits)}") if record and record.get("nodes") else None
        if drawn:
            circuits.append(drawn)
        table.append(_table_row(row, drawn))
    # named after the recipe, not the folder: a run moved or rerun elsewhere writes the same page
    return {"title": f"Extraction report: {Path(view.recipe).stem}", "recipe": view.recipe,
            "note": "Every circuit figure is read on each task's test split, which neither the mask nor the "
                    "choice of circuit size saw.",
            "models": [{"role": m.role, **{k: getattr(m, k) for k in MODEL_FIELDS}} for m in view.models],
            "summary": [line.replace("**", "") for line in view.ratios]
                       + [f"{label}: {', '.join(where)}." for label, where in view.flags]
                       + [f"Fidelity to the dense model. {line.replace('**', '')}" for line in view.fidelity_lines()]
                       + [f"Bridges. {line.replace('**', '')}" for line in view.bridge_lines],
            "splits": "Sufficient: the circuit alone (everything else held at its mean) reaches the target loss. "
                      "Necessary: removing only the circuit raises the loss to at least ln(2)/2.",
            "table": table, "images": _images(out), "circuits": circuits, "controls": _controls(view)}


def _controls(view) -> dict:
    """The controls table: one row per circuit, one column per control that ran."""
    controls = view.controls
    rows = []
    for row in view.circuits:
        cells = {control.name: cell for control, cell in row.controls}
        rows.append({"task": row.task, "model": row.model, "cells": [
            {"summary": cells[c.name].summary.replace("**", ""), "failed": cells[c.name].failed} if cells[c.name]
            else {"summary": "-", "failed": False} for c in controls]})
    return {"note": "On test, for each circuit. " + " ".join(f"{c.label[0].upper() + c.label[1:]}: {c.explanation}."
                                                             for c in controls),
            "labels": [c.label for c in controls], "rows": rows if controls else []}


def _table_row(row, drawn: dict | None) -> dict:
    r = row.result
    out = {"task": row.task, "model": row.model, "full_loss": r.full_loss, "anchor": drawn and drawn["anchor"],
           "verdict": row.verdict, "ok": row.ok}
    if r.circuit is not None:
        out.update(nodes=r.circuit.nodes, edges=r.circuit.edges, loss=r.circuit.loss,
                   ablated_loss=r.circuit.ablated_loss)
    return out


def circuit_view(record: dict, anchor: str) -> dict:
    """What the page draws for one circuit file: rows of node ids (bottom to top), edges strongest first
    as [from, to, weight], the residual identity links, and the node descriptions."""
    order = {name: i for i, name in enumerate(SITE_NAMES)}
    keys = sorted(record["nodes"], key=lambda key: (int(key.split(".")[0]), order[key.split(".", 1)[1]]))
    rows = [{"key": key, "nodes": [node_id(key, i) for i in sorted(record["nodes"][key])]} for key in keys]
    edges = sorted(([node_id(*e["from"]), node_id(*e["to"]), e["weight"]] for e in record["edges"] or []),
                   key=lambda e: -abs(e[2]))
    descriptions = record.get("descriptions") or {}
    effects = {node: abs(d.get("effect") or 0.0) for node, d in descriptions.items()}
    checks = CircuitChecks.from_dict(record["circuit"]) if record.get("circuit") else None
    return {"anchor": anchor, "task": record["task"], "model": record["model"], "rows": rows, "edges": edges,
            "identity": _identity_links(keys, record["nodes"]), "descriptions": descriptions,
            "leans_on": sorted(effects, key=lambda node: -effects[node])[:LEANS_ON],
            "max_effect": max(effects.values(), default=0.0), "node_count": sum(len(r["nodes"]) for r in rows),
            "loss": checks.loss if checks else None, "target": record["target_loss"],
            "verdict": checks.verdict if checks else "not checked"}


def _identity_links(keys: list[str], nodes: dict[str, list[int]]) -> list[list[str]]:
    """A residual channel written (attn_out, mlp_out) joined to its next read (attn_in, mlp_in) in the
    circuit: the residual stream carries it there, with no weight in between (not an edge)."""
    links = []
    for at, key in enumerate(keys):
        if key.split(".", 1)[1] not in WRITES:
            continue
        for index in nodes[key]:
            later = next((k for k in keys[at + 1:] if k.split(".", 1)[1] in READS and index in nodes[k]), None)
            if later:
                links.append([node_id(key, index), node_id(later, index)])
    return links


def _images(out: Path) -> list[dict]:
    return [{"title": title, "src": "data:image/png;base64," + base64.b64encode((out / name).read_bytes()).decode()}
            for name, title in PLOTS if (out / name).is_file()]
