"""Sparsity as something the training loop calls (llm-compressor's modifier shape, without its
machinery). Before a step it gives the step's densities and learning-rate factor, computed once; after
the optimizer step it projects every sparsified tensor to them. Dense pretraining passes none.

The schedules are in extract/sparsity.py, the top-k mask of one tensor in extract/projection.py.
"""
from __future__ import annotations

from dataclasses import dataclass

from extract.arch import SparseTensor, sparse_tensors
from extract.recipe import RecipeError, SparsityConfig
from extract.sparsity import density_at, final_densities, measured_density, project_, sharkfin_factor


@dataclass(frozen=True)
class StepDensities:
    """What one step projects to. `overall` is over every sparsified weight: what the log shows and the
    sharkfin factor reads. `per_tensor` shares it out the way the final densities do, so the nonzeros
    the projection keeps are `overall` of the weights at every step, not only at the end."""

    overall: float
    per_tensor: list[float]
    lr_factor: float


def budget_densities(tensors: list[SparseTensor], sparsity: SparsityConfig, model_name: str) -> list[float]:
    """Each tensor's final density, or a RecipeError naming the key when the embeddings' share leaves
    the matrices nothing."""
    try:
        return final_densities(tensors, sparsity.target_density, sparsity.embedding_density)
    except ValueError as error:
        embedding = sum(t.param.numel() for t in tensors if t.unit_axis is None)
        most = sparsity.target_density * sum(t.param.numel() for t in tensors) / embedding
        raise RecipeError(f"sparsity.embedding_density: {error} ({model_name}); it must be below {most:.5f}") from None


class Sparsifier:
    """Anneals a model's sparsified tensors from dense to their final densities over `steps` steps."""

    def __init__(self, model, sparsity: SparsityConfig, steps: int, model_name: str = "the model"):
        self.config, self.steps = sparsity, steps
        self.tensors = sparse_tensors(model, sparsity.embeddings)
        self.finals = budget_densities(self.tensors, sparsity, model_name)
        self.total = sum(t.param.numel() for t in self.tensors)

    def before_step(self, step: int) -> StepDensities:
        """The densities the step from `step` to `step + 1` ends at, and its learning-rate factor."""
        s = self.config
        progress = (step + 1) / self.steps
        overall = density_at(progress, s.target_density, s.anneal_fraction, s.anneal_shape)
        if s.embedding_density is None:
            per_tensor = [overall] * len(self.tensors)
        else:  # the embeddings follow their own schedule; the matrices share what is left of `overall`
            embedding = density_at(progress, s.embedding_density, s.anneal_fraction, s.anneal_shape)
            per_tensor = final_densities(self.tensors, overall, embedding)
        factor = sharkfin_factor(overall, s.target_density, s.sharkfin_power) if s.sharkfin else 1.0
        return StepDensities(overall, per_tensor, factor)

    def refit_due(self, step: int) -> bool:
        """Whether the step from `step` to `step + 1` ends with a least-squares refit (sparsity.refit_every):
        every `refit_every` steps of the anneal, and at its last step, where the target is reached."""
        s, done = self.config, step + 1
        if s.refit_every == 0:
            return False

        def annealing(steps_done: int) -> bool:
            density = density_at(steps_done / self.steps, s.target_density, s.anneal_fraction, s.anneal_shape)
            return density > s.target_density

        return (done % s.refit_every == 0 and annealing(done)) or (annealing(done - 1) and not annealing(done))

    def after_optimizer_step(self, densities: StepDensities) -> None:
        project_(self.tensors, densities.per_tensor, self.config.min_per_unit)

    def measured_density(self) -> float:
        """The nonzero fraction of the sparsified tensors now (under FSDP2 every process must call it)."""
        return measured_density(self.tensors)[0]
