"""`extract.load_circuit`: a published circuit, ready to inspect and to run.

    from extract import load_circuit

    circuit = load_circuit("name/repo", "single_double_quote")   # or a run's output folder
    print(circuit)                 # nodes, edges, and the test loss the run reported
    checked = circuit.check()      # the same checks, recomputed on the task's test examples

The circuit file carries everything a check needs besides the model: its nodes, the fingerprint of
the weights it was found on, the ablation means' file, and the test examples. So a reader re-checks
a published claim with the same code that made it, on the same examples, and a model that is not
the one the circuit was found on is refused rather than scored.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from extract.bridges import BRIDGES_CONFIG, BRIDGES_WEIGHTS, Bridges
from extract.circuits.checks import check_circuit
from extract.circuits.files import circuit_file, gates_from_record, read_circuit, test_examples
from extract.circuits.masks import NodeMask
from extract.circuits.prune import scores_with_gates
from extract.circuits.results import CircuitChecks
from extract.circuits.sites import node_sites
from extract.circuits.transfer import bridged_transfer
from extract.errors import UserError
from extract.hub import RunFiles, is_hub_id
from extract.models import load_model, load_tokenizer, weights_fingerprint
from extract.paths import CIRCUITS_DIRNAME
from extract.recipe import ModelConfig
from extract.tasks.examples import TaskExample


class CircuitLoadError(UserError, RuntimeError):
    """A circuit that cannot be loaded: missing, from an older format, or on weights that differ."""


@dataclass
class Circuit:
    """A task circuit on its model. `record` is the circuit file as written by the run (the claim)."""

    task: str
    role: str  # "sparse", "dense", or the model a `--model` run named
    record: dict
    model: torch.nn.Module
    tokenizer: object
    mask: NodeMask  # every node of the model, with its ablation mean; the circuit's gates select the kept ones
    examples: list[TaskExample]  # the test split every reported figure was read on
    files: RunFiles | None = None  # where the run's other files are (the bridges, for `transfer`)

    @property
    def nodes(self) -> dict[str, list[int]]:
        """Kept node indices by site, e.g. {"layers.0.mlp": [12, 40], ...}."""
        return self.record["nodes"] or {}

    @property
    def edges(self) -> list[dict]:
        """Every edge among the kept nodes: {"from": [site, index], "to": [site, index], "weight": w}; empty
        for a circuit of more than 100,000 edges, which lists none (its count: `.claimed.edges`)."""
        return self.record["edges"] or []

    @property
    def descriptions(self) -> dict[str, dict]:
        """What each node does, by node id ("1.attn_out:40"): its top contexts, what it separates, the
        tokens it pushes, where its head looks, and a one-line summary (extract/circuits/describe.py)."""
        return self.record.get("descriptions") or {}

    def gates(self) -> dict[str, torch.Tensor]:
        return gates_from_record(self.record, {site.key: site.width for site in self.mask.sites},
                                 f"{CIRCUITS_DIRNAME}/{circuit_file(self.task, self.role)}")

    @contextmanager
    def active(self):
        """Inside the block the model runs with only the circuit: every other node is held at its mean."""
        with self.mask.with_gates(self.model, self.gates()):
            yield self.model

    def scores(self, examples: list[TaskExample] | None = None) -> dict[str, float]:
        """The circuit's task loss (with its standard error) and accuracy, on `examples` or the test split."""
        return scores_with_gates(self.model, self.mask, self.gates(), examples or self.examples)

    def check(self, random_draws: int | None = None) -> dict:
        """Recompute the run's checks on the test split: loss, sufficient, necessary (the loss with the
        circuit ablated) and the random circuits of the same shape (as many draws as the run made)."""
        claimed = self.claimed
        draws = (claimed.random_draws if claimed else 10) if random_draws is None else random_draws
        seed = self.record["prune"]["seed"]
        return check_circuit(self.model, self.mask, self.gates(), self.examples, self.record["target_loss"],
                             draws, seed)

    def transfer(self, dense_path: str | None = None, random_draws: int | None = None) -> dict:
        """Recompute the bridged intervention the run reported (`record["transfer"]`): the circuit's edit
        carried into the dense model through the run's bridges at the site the run chose, on the same test
        pairs, with as many random node sets (circuits/transfer.py). `dense_path` says where the dense model
        is when the path the run used does not exist here; its weights must be the ones the run used."""
        claimed = self.record.get("transfer")
        if self.role != "sparse" or not claimed or self.files is None:
            raise CircuitLoadError(f"{self.task} ({self.role}): no bridged intervention was reported for this "
                                   "circuit (the run had no bridges, or this is not the sparse model's circuit)")
        source = _model_source(self.files, {"model_path": dense_path or claimed["dense_model"]}, "dense", None)
        dense = load_model(source).eval()
        if weights_fingerprint(dense) != claimed["dense_weights"]:
            raise CircuitLoadError(f"{source.name_or_path}: not the dense model the run bridged to "
                                   f"(fingerprint {weights_fingerprint(dense)}, the run's {claimed['dense_weights']})")
        bridges = Bridges.load(_bridges_folder(self.files))
        device = next(self.model.parameters()).device
        draws = claimed["random_draws"] if random_draws is None else random_draws
        return bridged_transfer(dense.to(device), self.model, bridges.to(device), self.mask.sites, self.gates(), [],
                                self.examples, draws, self.record["prune"]["seed"], site=claimed["site"])

    def to(self, device) -> Circuit:
        self.model.to(device)
        self.mask.to(device)
        return self

    @property
    def claimed(self) -> CircuitChecks | None:
        """The checks the run reported for this circuit (on the same test examples)."""
        return CircuitChecks.from_dict(self.record["circuit"]) if self.record.get("circuit") else None

    def __repr__(self) -> str:
        claimed = self.claimed
        nodes, edges, loss = (claimed.nodes, claimed.edges, claimed.loss) if claimed else (0, 0, float("nan"))
        return (f"Circuit({self.task!r} on the {self.role} model: {nodes:,} nodes, {edges:,} edges; "
                f"reported test loss {loss:.4f} on {len(self.examples)} examples, "
                f"{claimed.verdict if claimed else 'not checked'} at target {self.record['target_loss']})")


def _bridges_folder(files: RunFiles) -> Path:
    """The folder holding both bridge files (on the Hub, the download's snapshot folder)."""
    files.model_file(BRIDGES_WEIGHTS)
    return files.model_file(BRIDGES_CONFIG).parent


def _model_source(files: RunFiles, record: dict, role: str, model_path: str | None) -> ModelConfig:
    if model_path is not None:
        return ModelConfig(name_or_path=str(model_path))
    if role == "sparse":
        return ModelConfig(name_or_path=files.model_source(), revision=None if files.local else files.revision)
    source = record["model_path"]  # the dense model's recipe name (embedded, a Hub id) or a user's path
    if source != "embedded" and not Path(source).exists() and not is_hub_id(source):
        raise CircuitLoadError(f"the {role} model was loaded from {source} on the machine that ran the pruning; "
                               "pass model_path= to say where it is here")
    return ModelConfig(name_or_path=source)


def load_circuit(repo_or_dir: str | Path, task: str, model: str = "sparse", *, revision: str | None = None,
                 model_path: str | None = None, device: str | torch.device = "cpu") -> Circuit:
    """The circuit of `task` on `model` ("sparse", "dense", or a model a `--model` run named) from a
    run's output folder or the Hub repo it was pushed to. Downloads only the circuit file, its means
    and the model. `model_path` overrides where the model is loaded from; its weights must still be
    the ones the circuit was found on."""
    files = RunFiles(repo_or_dir, revision)
    name = f"{CIRCUITS_DIRNAME}/{circuit_file(task, model)}"
    try:
        record = read_circuit(files.path(name))
    except FileNotFoundError as error:
        raise CircuitLoadError(f"{error} (no circuit of {task!r} on the {model} model)") from None
    if "test_examples" not in record or "means_file" not in record:
        raise CircuitLoadError(f"{name}: written by an older extract (circuit format {record.get('format')}); "
                               "prune again to get a circuit that re-checks on its own")
    if record["nodes"] is None:
        raise CircuitLoadError(f"{name}: pruning found no circuit of {task!r} on the {model} model "
                               "(the file holds the attempt and its losses)")
    cfg = _model_source(files, record, model, model_path)
    net = load_model(cfg).eval()
    found_on = weights_fingerprint(net)
    if found_on != record["weights"]:
        raise CircuitLoadError(f"{cfg.name_or_path}: these weights (fingerprint {found_on}) are not the ones the "
                               f"circuit was found on ({record['weights']})")
    means = load_file(files.path(f"{CIRCUITS_DIRNAME}/{record['means_file']}"))
    mask = NodeMask(node_sites(net), means)
    circuit = Circuit(task, model, record, net, load_tokenizer(cfg), mask, test_examples(record), files)
    circuit.gates()  # a file whose nodes this model does not have is refused now, by name
    return circuit.to(device)
