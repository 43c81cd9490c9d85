"""The wheel, installed in a fresh virtual environment, runs the default recipe from outside the checkout."""
import os
import subprocess
import sys
import venv

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_the_wheel_runs_the_default_recipe_in_a_fresh_environment(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, ROOT], check=True)
    (wheel,) = wheels.glob("sparse_circuit_extract-*.whl")
    env_dir = tmp_path / "env"
    venv.create(env_dir, with_pip=True)
    python, script = env_dir / "bin" / "python", env_dir / "bin" / "sparse-circuit-extract"
    # torch pinned to the CPU build, as in the README; everything else from the wheel's requirements
    subprocess.run([python, "-m", "pip", "install", "-q", "torch==2.13.0", wheel], check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}

    def run(*args):
        return subprocess.run([*args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)

    where = run(python, "-c", "import extract; print(extract.__file__)")
    assert where.stdout.startswith(str(env_dir)), where  # the installed package, not the checkout
    shown = run(script, "--help")
    assert shown.returncode == 0 and "tiny-python" in shown.stdout and "gpt2-small" in shown.stdout
    proc = run(script, "--stage", "sparsify", "train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
               "data.heldout_blocks=2", "output_dir=out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (elsewhere / "out" / "model" / "model.safetensors").is_file()
    assert (elsewhere / "out" / "recipe.yaml").is_file()
    assert "model: density 0.03125 over the sparsified tensors" in proc.stdout + proc.stderr  # the default's 1/32


def _import_graph() -> dict[str, set[str]]:
    """extract's modules and the extract modules each imports, inside functions too."""
    import ast

    package = ROOT / "extract"
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("extract"):
                targets = [f"{node.module}.{a.name}" for a in node.names]  # `from extract import atomic`
                deps |= {t for t in targets if t in modules} or {node.module}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in modules}
        graph[name] = deps - {name}
    return graph


def test_the_package_has_no_import_cycle_and_its_layers_flow_one_way():
    graph = _import_graph()

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(dep == goal or (dep not in seen and not seen.add(dep) and reaches(dep, goal, seen))
                   for dep in graph[start])

    cycles = [name for name in graph if reaches(name, name, set())]
    assert not cycles, cycles
    # circuits, the report and the card read saved artifacts: none of them pulls in the training loop
    readers = [n for n in graph if n.startswith(("extract.circuits", "extract.report", "extract.card"))]
    assert readers and not [n for n in readers if reaches(n, "extract.train", set())]
