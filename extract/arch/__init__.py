"""Architecture families: one module per model layout, and the functions that read them.

Supporting a new layout is one new module here that builds a `Family` (its node sites and edge
matrices), plus its entry in FAMILIES. The sparsified tensors are derived from the edge matrices
(every matrix, with the unit axis its storage implies) and the input and output embeddings, so
weight orientation is stated once per family.
"""
from __future__ import annotations

from extract.arch import gpt2, gpt_neox, llama
from extract.arch.base import (
    SITE_NAMES,
    ArchitectureError,
    EdgeMatrix,
    Family,
    Site,
    SparseTensor,
)

FAMILIES: tuple[Family, ...] = (gpt2.FAMILY, llama.FAMILY, gpt_neox.FAMILY)

__all__ = ["SITE_NAMES", "ArchitectureError", "EdgeMatrix", "FAMILIES", "Family", "Site", "SparseTensor",
           "family_of", "node_sites", "sparse_tensors", "supported_model_types"]


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in family.model_types)


def family_of(model_or_config) -> Family:
    """The family of a model or a config, by its `model_type`."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise ArchitectureError(f"model_type {model_type!r} has no architecture mapping "
                            f"(supported: {', '.join(supported_model_types())})")


def node_sites(model) -> list[Site]:
    return family_of(model).sites(model)


def sparse_tensors(model, embeddings: bool = True) -> list[SparseTensor]:
    """The tensors the projection acts on, in parameter order: every edge matrix, and with
    `embeddings` the token embedding, an untied unembedding and the family's extra embeddings. A
    tied unembedding is the token embedding's own Parameter, so it is one tensor, listed once."""
    family = family_of(model)
    unit_axes: dict[str, int | None] = {m.weight: m.unit_axis for m in family.edge_matrices(model)}
    params = dict(model.named_parameters())  # a tied weight appears once, under its first name
    if embeddings:
        name_of = {id(param): name for name, param in params.items()}
        ends = [model.get_input_embeddings(), model.get_output_embeddings()]
        for name in [name_of[id(m.weight)] for m in ends if m is not None] + list(family.extra_embeddings):
            unit_axes[name] = None
    missing = sorted(set(unit_axes) - set(params))
    if missing:
        raise ArchitectureError(f"{type(model).__name__} has no parameter {missing[0]!r} that the "
                                f"{family.name} family names ({len(missing)} missing)")
    return [SparseTensor(name, param, unit_axes[name]) for name, param in params.items() if name in unit_axes]
