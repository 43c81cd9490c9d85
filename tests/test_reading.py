"""Reading circuits: node descriptions, the HTML report in a real browser, and any two models compared.

One prune run of two tiny GPT-2s trained (from different seeds) to close quotes, through the command
line, is shared by every test here.
"""
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import make_quote_model, run_cli, tiny_recipe_dict

PRUNE = ["prune.steps=80", "prune.batch_size=32", "prune.lr=0.05", "prune.mean_blocks=8", "prune.random_draws=2",
         "prune.nonsense_control=false", "prune.attribution_baseline=false"]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def run(tmp_path_factory, quote_model, tiny_corpus):
    """(output folder, [model A, model B], task file, the command's stdout and stderr, its arguments)."""
    root = tmp_path_factory.mktemp("reading")
    model_a, task_file = quote_model
    model_b, _ = make_quote_model(root / "quote-model-b", seed=2)
    out = root / "out"
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe_dict(model_a, tiny_corpus, out)))
    args = ("--recipe", recipe, "--stage", "prune", "--model", model_a, "--model", model_b, "--task", task_file,
            f"output_dir={out}", *PRUNE)
    proc = run_cli(*args)
    return out, [str(model_a), str(model_b)], task_file, proc, args


def _record(out: Path, model: str) -> dict:
    from extract.circuits.files import circuit_file, read_circuit

    return read_circuit(out / "circuits" / circuit_file("quotes", model))


def _circuit(out: Path, model: str):
    from extract.circuits.load import load_circuit

    return load_circuit(out, "quotes", model=model)


@pytest.mark.slow
def test_any_two_models_are_compared_first_to_second(run):
    out, (a, b), _, proc, _ = run
    report = json.loads((out / "report.json").read_text())
    summary = report["summary"]
    assert summary["compared"] == [a, b] and summary["tasks_compared"] == ["quotes"]
    edges = [report["tasks"]["quotes"][m]["circuit"]["edges"] for m in (a, b)]
    assert summary["edges_geomean"] == pytest.approx(edges)
    assert summary["edge_ratio"] == pytest.approx(edges[0] / edges[1])
    line = (f"geometric-mean circuit edges {edges[0]:,.0f} {a} vs {edges[1]:,.0f} {b}, "
            f"a ratio of {summary['edge_ratio']:.1f}x")
    assert line in proc.stdout
    markdown = (out / "report.md").read_text()
    assert f"{edges[0]:,.0f} {a} vs {edges[1]:,.0f} {b}, a ratio of **{summary['edge_ratio']:.1f}x**" in markdown


@pytest.mark.slow
def test_every_kept_node_of_every_circuit_is_described(run):
    from extract.circuits.describe import CONTEXTS, TOP_TOKENS

    out, models, _, _, _ = run
    for model in models:
        record = _record(out, model)
        nodes = {f"{key}:{i}" for key, indices in record["nodes"].items() for i in indices}
        descriptions = record["descriptions"]
        assert set(descriptions) == nodes
        tokenizer = _circuit(out, model).tokenizer
        names = [(tokenizer.decode([t]), tokenizer.decode([a])) for _, t, a in record["test_examples"]]
        first_side = sum(target < alternative for target, alternative in names)
        for node, d in descriptions.items():
            site = node.split(":")[0].split(".")[1]
            assert d["summary"] and len(d["corpus"]) == CONTEXTS and 0 < len(d["task"]) <= CONTEXTS
            assert [s["n"] for s in d["sides"]["sides"]] == [first_side, len(names) - first_side]
            assert [s["answers"] for s in d["sides"]["sides"]] == [['"'], ["'"]]
            assert ("logits" in d) == (site in ("attn_out", "mlp_out", "mlp"))
            assert ("attention" in d) == (site in ("q", "k"))
            if "logits" in d:
                up = [v for _, v in d["logits"]["up"]]
                assert len(up) == TOP_TOKENS and up == sorted(up, reverse=True) and up[-1] > d["logits"]["down"][0][1]


@pytest.mark.slow
def test_descriptions_match_an_independent_reading_of_the_model(run):
    """Contexts, sides, pushed tokens and attention, recomputed here with plain forward hooks and
    GPT-2's own parameter names rather than the project's site machinery."""
    from extract.circuits.stage import _mean_blocks
    from extract.recipe import load_recipe

    out, (model, _), _, _, _ = run
    circuit = _circuit(out, model)
    record, tokenizer, gpt2 = circuit.record, circuit.tokenizer, circuit.model
    described = circuit.descriptions
    recipe, _ = load_recipe(str(out / "recipe.yaml"))
    blocks = _mean_blocks(recipe, tokenizer)

    def captured(module, inputs: torch.Tensor, **kwargs) -> torch.Tensor:
        seen = []
        handle = module.register_forward_hook(lambda m, args, output: seen.append(output[0] if isinstance(output, tuple)
                                                                                   else output))
        with torch.no_grad():
            gpt2(input_ids=inputs, **kwargs)
        handle.remove()
        return seen[0]

    # contexts: layer 0's attention input (ln_1's output) on the held-out blocks
    index = record["nodes"]["0.attn_in"][0]
    values = captured(gpt2.transformer.h[0].ln_1, blocks)[..., index]
    mean = circuit.mask.mean_of(next(s for s in circuit.mask.sites if s.key == "0.attn_in"))[index]
    row, column = divmod(int((values - mean).abs().argmax()), values.shape[1])
    top = described[f"0.attn_in:{index}"]["corpus"][0]
    assert top["value"] == pytest.approx(float(values[row, column]), abs=1e-3)
    assert top["token"] == tokenizer.decode([int(blocks[row, column])])

    # sides: the residual write that separates the answers most, read at each prompt's last token
    writes = [n for n in described if n.split(":")[0].endswith(("attn_out", "mlp_out"))]
    best = max(writes, key=lambda n: abs(described[n]["sides"]["separation"] or 0))
    assert abs(described[best]["sides"]["separation"]) > 2  # the model carries the answer there
    layer, site = best.split(":")[0].split(".")
    channel = int(best.split(":")[1])
    module = gpt2.transformer.h[int(layer)].attn if site == "attn_out" else gpt2.transformer.h[int(layer)].mlp
    first_side = []
    for example in circuit.examples:
        value = float(captured(module, torch.tensor([example.prompt_ids]))[0, -1, channel])
        target, other = tokenizer.decode([example.target_id]), tokenizer.decode([example.alternative_id])
        first_side.append((target < other, value))
    for side, expected in zip((True, False), described[best]["sides"]["sides"]):
        values = torch.tensor([v for s, v in first_side if s == side], dtype=torch.float64)
        assert float(values.mean()) == pytest.approx(expected["mean"], abs=1e-3)
        assert float(values.std()) == pytest.approx(expected["std"], abs=1e-3)

    # pushed tokens: an MLP neuron's row of c_proj, centred and scaled by ln_f, through the tied unembedding
    neuron = record["nodes"]["0.mlp"][0]
    row = gpt2.transformer.h[0].mlp.c_proj.weight[neuron]
    effect = ((row - row.mean()) * gpt2.transformer.ln_f.weight) @ gpt2.transformer.wte.weight.t()
    assert [t for t, _ in described[f"0.mlp:{neuron}"]["logits"]["up"]] == [
        tokenizer.decode([int(i)]) for i in effect.topk(5).indices]

    # attention: a query channel's head, the circuit alone running, one unpadded prompt at a time
    qk = sorted(n for n in described if n.split(":")[0].endswith((".q", ".k")))
    assert qk, "the circuit keeps some query or key channel"
    node = qk[0]
    looks = described[node]["attention"]
    layer, head = int(node.split(".")[0]), looks["heads"][0]
    gpt2.set_attn_implementation("eager")
    looked = Counter()
    with circuit.active():
        for example in circuit.examples[:128]:
            with torch.no_grad():
                pattern = gpt2(input_ids=torch.tensor([example.prompt_ids]), output_attentions=True).attentions[layer]
            weights = pattern[0, looks["heads"]].mean(0)[-1]
            looked[tokenizer.decode([example.prompt_ids[int(weights.argmax())]])] += 1
    share = {token: count / sum(looked.values()) for token, count in looked.items()}
    assert looks["looks_at"][0]["share"] == pytest.approx(max(share.values()), abs=1e-3)
    assert share[looks["looks_at"][0]["token"]] == pytest.approx(looks["looks_at"][0]["share"], abs=1e-3)
    assert head in range(4)


@pytest.mark.slow
def test_the_first_order_effect_ranks_nodes_like_removing_them(run):
    """The estimate the report orders nodes by, against removing each node in turn on the test split
    (Spearman 0.96 here when written)."""
    out, (model, _), _, _, _ = run
    circuit = _circuit(out, model)
    base = circuit.scores()["loss"]
    estimate, exact = [], []
    for node, d in circuit.descriptions.items():
        key, index = node.split(":")
        gates = circuit.gates()
        gates[key][int(index)] = 0.0
        from extract.circuits.prune import scores_with_gates

        exact.append(scores_with_gates(circuit.model, circuit.mask, gates, circuit.examples)["loss"] - base)
        estimate.append(d["effect"])
    rank = lambda xs: torch.tensor(xs).argsort().argsort().double()  # noqa: E731
    correlation = torch.corrcoef(torch.stack([rank(estimate), rank(exact)]))[0, 1]
    assert correlation > 0.8, f"Spearman correlation {float(correlation):.2f}"
    top = max(range(len(estimate)), key=lambda i: estimate[i])
    assert exact[top] > 0  # the node the report lists first matters


@pytest.mark.slow
def test_a_circuit_file_without_descriptions_gets_them_without_pruning_again(run, tmp_path):
    from extract.circuits.files import circuit_file

    out, (model, _), _, _, args = run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    path = copy / "circuits" / circuit_file("quotes", model)
    record = json.loads(path.read_text())
    described = record.pop("descriptions")
    # as left by a run stopped while describing (the pruning is saved first), or written before
    # descriptions existed
    path.write_text(json.dumps(record))
    rerun = run_cli(*[a for a in args if not str(a).startswith("output_dir=")], f"output_dir={copy}")
    assert "describing the" in rerun.stderr and "done in an earlier run" in rerun.stderr
    assert "prune quotes" not in rerun.stderr  # no mask trained
    assert json.loads(path.read_text())["descriptions"] == described


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="needs Debian's chromium and chromium-driver (the README's test command installs them)")
@pytest.mark.slow
def test_the_html_report_shows_every_circuit_and_a_nodes_description_in_chromium(run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    out, models, _, _, _ = run
    page = (out / "report.html").read_text()
    for remote in ("<link", 'src="http', "src='http", "@import", "url(http", "fetch("):
        assert remote not in page  # self-contained: nothing to load from anywhere

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        browser.get((out / "report.html").as_uri())
        assert browser.execute_script("return document.body.dataset.ready") == "true"
        sections = browser.find_elements(By.CSS_SELECTOR, "section.circuit")
        assert [s.get_attribute("data-model") for s in sections] == models
        for section, model in zip(sections, models):
            record = _record(out, model)
            assert len(section.find_elements(By.CSS_SELECTOR, "circle.node")) == record["circuit"]["nodes"]
            node = section.find_elements(By.CSS_SELECTOR, "circle.node")[-1]
            browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", node)
            node.click()
            node_id = node.get_attribute("data-node")
            assert section.find_element(By.CSS_SELECTOR, ".node-title").text == node_id
            summary = section.find_element(By.CSS_SELECTOR, ".node-summary").text
            assert summary == record["descriptions"][node_id]["summary"].strip()
            # the edge filter: fewer edges drawn when asked
            slider = section.find_element(By.CSS_SELECTOR, "input.edge-filter")
            browser.execute_script("arguments[0].value = 1; arguments[0].dispatchEvent(new Event('input'))", slider)
            assert len(section.find_elements(By.CSS_SELECTOR, "line.edge")) == min(1, len(record["edges"]))
        table_rows = browser.find_elements(By.CSS_SELECTOR, "table tr")
        assert any(models[1] in row.text for row in table_rows)
        errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert errors == []
    finally:
        browser.quit()


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_pushed_tokens_go_through_the_final_norm_and_its_sign(variant):
    """A residual channel's pushed tokens are its unembedding column times the final norm's gain: a
    negative gain swaps up and down. A neuron's row is scaled channel by channel, which reorders its
    tokens (and GPT-2's LayerNorm centres it first)."""
    from transformers import AutoTokenizer

    from extract.arch import node_sites
    from extract.circuits.describe import _logit_effects
    from extract.paths import TOKENIZER_DIR
    from tests.families import D_MODEL, tiny_model

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model = tiny_model(variant, vocab_size=len(tokenizer))
    final_norm = model.transformer.ln_f if variant == "gpt2" else model.model.norm
    if variant == "gpt2":  # (neurons, d_model): each neuron's write
        down_proj = model.transformer.h[1].mlp.c_proj.weight
    else:
        down_proj = model.model.layers[1].mlp.down_proj.weight.t()
    order = torch.randperm(D_MODEL, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        final_norm.weight.copy_(torch.linspace(-2.0, 3.0, D_MODEL)[order])
    gain, unembed = final_norm.weight.detach(), model.get_output_embeddings().weight.detach()
    sites = [s for s in node_sites(model) if s.key in ("1.attn_out", "1.mlp")]
    negative = int(torch.nonzero(gain < -0.5)[0])
    kept = {"1.attn_out": torch.tensor([negative]), "1.mlp": torch.tensor([0, 5])}
    described = _logit_effects(model, sites, kept, tokenizer)

    def top(effect):
        return [tokenizer.decode([int(i)]) for i in effect.topk(5).indices]

    def through_the_final_norm(write):  # a residual direction, as the unembedding reads it
        return unembed @ ((write - write.mean() if variant == "gpt2" else write) * gain)

    channel = torch.zeros(D_MODEL)
    channel[negative] = 1.0
    assert [t for t, _ in described[f"1.attn_out:{negative}"]["up"]] == top(through_the_final_norm(channel))
    assert [t for t, _ in described[f"1.attn_out:{negative}"]["down"]] == top(-through_the_final_norm(channel))
    if variant == "llama":  # no centring: the negative gain alone swaps the column's tokens
        assert [t for t, _ in described[f"1.attn_out:{negative}"]["up"]] == top(-unembed[:, negative])
    for neuron in (0, 5):
        assert [t for t, _ in described[f"1.mlp:{neuron}"]["up"]] == top(through_the_final_norm(down_proj[neuron]))


def test_a_large_circuit_is_described_in_full_for_its_largest_effects_only(monkeypatch, quote_model):
    """Past MAX_DESCRIBED nodes, the nodes of largest |effect| get full descriptions and the rest their
    effect alone, with the same effects as when every node is described."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from extract.circuits import describe
    from extract.circuits.masks import NodeMask
    from extract.circuits.sites import node_sites
    from extract.tasks.jsonl import load_task_file

    model_dir, task_file = quote_model
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    examples = load_task_file(task_file, tokenizer, model.config.max_position_embeddings)[:16]
    sites = [s for s in node_sites(model) if s.layer == 0]
    mask = NodeMask(sites, {s.key: torch.randn(s.width) * 0.1 for s in sites})
    gates = {s.key: (torch.arange(s.width) % 3 == 0).float() for s in sites}
    blocks = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    everything = describe.describe_circuit(model, tokenizer, sites, mask, gates, blocks, examples)
    monkeypatch.setattr(describe, "MAX_DESCRIBED", 5)
    capped = describe.describe_circuit(model, tokenizer, sites, mask, gates, blocks, examples)
    assert set(capped) == set(everything) and len(everything) > 5
    assert {n: d["effect"] for n, d in capped.items()} == {n: d["effect"] for n, d in everything.items()}
    largest = sorted(everything, key=lambda n: -abs(everything[n]["effect"]))[:5]
    full = [n for n, d in capped.items() if "corpus" in d]
    assert sorted(full) == sorted(largest)
    assert all(capped[n] == everything[n] for n in full)
    for node in set(capped) - set(full):
        assert set(capped[node]) == {"site", "index", "effect", "summary"}
        assert "not described in full" in capped[node]["summary"]
