"""Publishing and loading through the Hub's HTTP API, against tests/hub_server.py on 127.0.0.1.

Everything that talks to the Hub runs in a subprocess, as a user's command would, with HF_ENDPOINT
pointing at the server (huggingface_hub reads it, and HF_HUB_OFFLINE, at import) and a token that
must never show up in any output.
"""
import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli
from tests.hub_server import serve_in_thread

pytestmark = pytest.mark.slow  # end to end: the command line, several processes or a Hub

TOKEN = "hf_testTOKENthatMustNeverBePrinted0123456789"
REPO = "user/tiny-run"
# The default fallback penalties stay on: these tests are about publishing, so they prune as a user would
PRUNE = ["prune.steps=60", "prune.batch_size=32", "prune.lr=0.05", "prune.mean_blocks=8", "prune.random_draws=3",
         "prune.nonsense_control=false", "prune.attribution_baseline=false"]


class Hub:
    def __init__(self, root: Path, home: Path):
        self.server = serve_in_thread(root)
        self.root, self.home, self.outputs = root, home, []
        self.env = {"HF_ENDPOINT": self.server.url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_XET": "1",
                    "HF_HUB_OFFLINE": "0", "HF_HOME": str(home)}

    def cli(self, *args, check=True):
        proc = run_cli(*args, env=self.env, check=check)
        self.outputs.append(proc.stdout + proc.stderr)
        return proc

    def python(self, code: str, cache: Path) -> str:
        """Run `code` in a fresh interpreter against the server, with its own download cache; its stdout."""
        env = {**self.env, "HF_HOME": str(cache)}
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              env={**os.environ, **env}, cwd=ROOT, timeout=600)
        self.outputs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout

    def requests(self, since: int = 0) -> list[tuple[str, str, int]]:
        return [(r["method"], r["path"], r["status"]) for r in self.server.log[since:]]

    def files(self, repo: str) -> dict[str, dict]:
        data = json.loads((self.root / "repos" / f"{repo}.json").read_text())
        return data["commits"][data["refs"]["main"]]["files"]

    def commits(self, repo: str) -> int:
        return len(json.loads((self.root / "repos" / f"{repo}.json").read_text())["commits"])


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = Hub(tmp_path_factory.mktemp("hub-root"), tmp_path_factory.mktemp("hf-home"))
    yield hub
    hub.server.shutdown()


@pytest.fixture(scope="module")
def pushed(hub, quote_model, tiny_corpus, tmp_path_factory):
    """A finished tiny run (the quote model, sparsified gently enough to keep the task) pushed to REPO by
    its last step, as `hub.repo_id` in the recipe makes a run do."""
    from tests.conftest import tiny_recipe_dict

    model_dir, task_file = quote_model
    root = tmp_path_factory.mktemp("pushed")
    data = tiny_recipe_dict(model_dir, tiny_corpus, root / "out")
    data.update(tasks=[{"file": str(task_file)}], hub={"repo_id": REPO, "license": "mit"})
    data["sparsity"].update(target_density=0.5)
    data["loss"] = {"ce_weight": 0.0, "kl_weight": 1.0}
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    proc = hub.cli("--recipe", recipe, *PRUNE)
    return recipe, root / "out", proc


def _tree_digest(folder: Path) -> dict[str, str]:
    """Every output file's hash; not the lock, which each command takes and stamps with its pid."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def test_a_finished_run_pushes_and_loads_back_by_repo_id(hub, pushed, tmp_path):
    recipe, out, proc = pushed
    assert f"pushed: {REPO}" in proc.stdout
    files = hub.files(REPO)
    report = json.loads((out / "report.json").read_text())
    circuits = report["tasks"]["quotes"]
    assert circuits["sparse"]["circuit"] and circuits["dense"]["circuit"], "both models should keep the task"
    expected = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
                "recipe.yaml", "report.json", "report.md", "report.html", "circuits/circuits.json",
                "circuits/quotes.dense.json", "circuits/quotes.sparse.json", "circuits/loss_vs_edges.png"}
    assert expected <= set(files)
    assert not any(p.startswith(("checkpoints/", "circuits/results/")) for p in files)  # local resume state only
    means = {json.loads((out / "circuits" / f"quotes.{m}.json").read_text())["means_file"] for m in ("dense", "sparse")}
    assert {f"circuits/{m}" for m in means} <= set(files)

    # a reader with nothing but the repo id: plain transformers loads bit-identical weights, and the
    # README's lines load both circuits and recompute what report.json claims
    readme = (ROOT / "README.md").read_text()
    lines = re.search(r"```python\n(from extract import load_circuit\n.*?)```", readme, re.S).group(1)
    lines = lines.replace("you/tiny-python-sparse", REPO).replace("single_double_quote", "quotes")
    code = f"""
        import json
        import torch
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained({REPO!r})
        saved = load_file({str(out / "model" / "model.safetensors")!r})
        state = model.state_dict()
        assert all(torch.equal(state[name], tensor) for name, tensor in saved.items()), "weights differ"
        print("zeros", sum(int((t == 0).sum()) for t in saved.values()))
{textwrap.indent(lines, " " * 8)}
        dense = load_circuit({REPO!r}, "quotes", model="dense").check()
        print(json.dumps({{"sparse": checked, "dense": dense, "repr": repr(circuit)}}))
    """
    result = json.loads(hub.python(code, tmp_path / "reader-cache").splitlines()[-1])
    for role in ("sparse", "dense"):
        claimed = circuits[role]["circuit"]
        assert result[role]["loss"] == pytest.approx(claimed["loss"], abs=1e-6)
        assert result[role]["edges"] == claimed["edges"] and result[role]["nodes"] == claimed["nodes"]
        assert (result[role]["sufficient"], result[role]["necessary"]) == (claimed["sufficient"], claimed["necessary"])
        assert result[role]["random_loss"] == pytest.approx(claimed["random_loss"], abs=1e-6)
    assert "quotes" in result["repr"] and f"{circuits['sparse']['circuit']['nodes']:,} nodes" in result["repr"]

    # the same repo id prunes again as a model of its own
    again = tmp_path / "again"
    hub.cli("--recipe", recipe, "--stage", "prune", "--model", REPO, f"output_dir={again}", *PRUNE)
    entry = json.loads((again / "report.json").read_text())["tasks"]["quotes"][REPO]
    assert entry["full_loss"] == pytest.approx(circuits["sparse"]["full_loss"], abs=1e-6)


def test_the_card_is_generated_from_the_report(hub, pushed):
    from extract.card import model_card
    from extract.recipe import load_recipe

    _, out, _ = pushed
    card = (hub.root / "blobs" / hub.files(REPO)["README.md"]["oid"]).read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "transformers" and meta["license"] == "mit"
    assert "weight-sparse" in meta["tags"]
    report = json.loads((out / "report.json").read_text())
    sparse = report["sparse"]
    assert f"{sparse['nonzero_params']:,} of {sparse['params']:,}" in card and f"{sparse['heldout_loss']:.4f}" in card
    circuit = report["tasks"]["quotes"]["sparse"]["circuit"]
    assert f"| quotes | sparse | {circuit['nodes']:,} | {circuit['edges']:,} | {circuit['loss']:.3f} |" in card
    assert f'load_circuit("{REPO}", "quotes")' in card and "--recipe run/recipe.yaml" in card

    recipe, _ = load_recipe(str(out / "recipe.yaml"))
    assert model_card(report, recipe, REPO) == card  # nothing on the card is written by hand
    report["tasks"]["quotes"]["sparse"]["circuit"]["edges"] = 123457
    report["sparse"]["heldout_loss"] = 9.8765
    changed = model_card(report, recipe, REPO)
    assert "| 123,457 |" in changed and "9.8765" in changed and "9.8765" not in card

    # a `--stage prune --model X` run has no model of its own: the card says how to load its circuits only
    pruned_only = {"recipe": "r.yaml", "target_loss": 0.15, "summary": {},
                   "tasks": {"quotes": {"you/other-model": report["tasks"]["quotes"]["dense"]}}}
    card = model_card(pruned_only, recipe, REPO)
    assert "from_pretrained" not in card and "## Models" not in card
    assert f'load_circuit("{REPO}", "quotes", model=\'you/other-model\')' in card


def test_pushing_the_same_run_again_changes_nothing(hub, pushed):
    recipe, out, _ = pushed
    commits, since = hub.commits(REPO), len(hub.server.log)
    proc = hub.cli("--recipe", recipe, "--stage", "push")
    assert "nothing to push" in proc.stderr and f"pushed: {REPO}" in proc.stdout
    assert hub.commits(REPO) == commits
    assert not any(m == "PUT" or path.endswith("/commit/main") for m, path, _ in hub.requests(since))


def test_an_interrupted_push_is_reported_and_a_rerun_completes_it(hub, pushed):
    recipe, out, _ = pushed
    repo = "user/interrupted"
    before = _tree_digest(out)
    hub.server.faults.append({"method": "POST", "path": f"/api/models/{repo}/commit/", "status": 500, "times": 1})
    failed = hub.cli("--recipe", recipe, "--stage", "push", f"hub.repo_id={repo}", check=False)
    assert failed.returncode == 1
    assert f"push to {repo}@main failed while uploading the files and committing" in failed.stderr
    assert "rerun the same command" in failed.stderr and "Traceback" not in failed.stderr
    assert hub.files(repo) == {} and _tree_digest(out) == before  # nothing half-done, locally or on the Hub

    since = len(hub.server.log)
    hub.cli("--recipe", recipe, "--stage", "push", f"hub.repo_id={repo}")
    pushed_files = {path: f for path, f in hub.files(REPO).items() if path != "README.md"}  # the card names its repo
    assert {path: f for path, f in hub.files(repo).items() if path != "README.md"} == pushed_files
    assert not any(m == "PUT" for m, _, _ in hub.requests(since))  # the model uploaded before the failure is kept


def test_a_lora_adapter_on_the_hub_is_sparsified_and_pruned_by_repo_id(hub, quote_model, write_recipe, tmp_path):
    model_dir, task_file = quote_model
    hub.python(f"""
        import torch
        from huggingface_hub import HfApi
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM

        api = HfApi()
        api.create_repo("user/quote-base", exist_ok=True)
        api.upload_folder(repo_id="user/quote-base", folder_path={str(model_dir)!r})
        base = AutoModelForCausalLM.from_pretrained("user/quote-base")
        torch.manual_seed(0)
        ids = torch.arange(10)[None]
        before = base(ids).logits
        lora = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
        assert not torch.allclose(lora(ids).logits, before), "the adapter should change the model"
        lora.save_pretrained({str(tmp_path / "adapter")!r})
        api.create_repo("user/quote-lora", exist_ok=True)
        api.upload_folder(repo_id="user/quote-lora", folder_path={str(tmp_path / "adapter")!r})
    """, tmp_path / "maker-cache")
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "user/quote-base"
    assert "tokenizer_config.json" not in hub.files("user/quote-lora")  # the tokenizer comes from the base

    out = tmp_path / "out"
    recipe = write_recipe(model={"name_or_path": "user/quote-lora"}, tasks=[{"file": str(task_file)}])
    hub.cli("--recipe", recipe, f"output_dir={out}", *PRUNE)
    report = json.loads((out / "report.json").read_text())
    assert report["dense"]["model"] == "user/quote-lora" and report["dense"]["adapter_base"] == "user/quote-base"
    assert report["sparse"]["density"] <= 0.125 + 1e-3
    assert set(report["tasks"]["quotes"]) == {"dense", "sparse"}
    card = (out / "model" / "README.md").read_text()
    assert "base_model: user/quote-base" in card and "`user/quote-base` with the LoRA adapter `user/quote-lora`" in card


def test_the_server_runs_on_its_own(tmp_path):
    """`python tests/hub_server.py --port PORT --root DIR`, as docs/publishing.md tells a user to start it."""
    import urllib.error
    import urllib.request

    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "hub_server.py"), "--port", "0", "--root",
                             str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"http://127\.0\.0\.1:\d+", proc.stdout.readline()).group(0)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{url}/api/models/user/nothing-here")
        assert missing.value.code == 404 and missing.value.headers["X-Error-Code"] == "RepoNotFound"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_the_token_never_appears_in_any_output(hub, pushed):
    """Last in the module: every command above ran with the token in its environment."""
    _, out, _ = pushed
    assert hub.outputs, "the tests above should have run commands"
    assert not any(TOKEN in text for text in hub.outputs)
    for folder in (out, hub.root, hub.home):
        for path in folder.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path
