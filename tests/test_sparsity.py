"""Projection, schedules and gradient rescaling, checked on tensors and a real (tiny) GPT-2."""
import math

import pytest
import torch

from extract.arch import sparse_tensors
from extract.sparsity import (
    base_lr_factor,
    density_at,
    density_floor,
    kept_count,
    measured_density,
    project_,
    projection_mask,
    rescale_gradients_to_unit_rms,
    sharkfin_factor,
    units_at_minimum,
)


@pytest.mark.parametrize("unit_axis", [0, 1, None])
@pytest.mark.parametrize("k", [40, 100, 500])
def test_projection_keeps_exactly_k_and_the_per_unit_minimum(unit_axis, k):
    torch.manual_seed(1)
    weight = torch.randn(24, 40)
    mask = projection_mask(weight, k, unit_axis, min_per_unit=3)
    protected = 3 * weight.shape[unit_axis] if unit_axis is not None else 0
    assert int(mask.sum()) == max(k, protected)
    if unit_axis is not None:
        per_unit = mask.sum(dim=1 - unit_axis)
        assert int(per_unit.min()) >= 3
        # each unit's own top-3 magnitudes are among the kept entries
        top = weight.abs().topk(3, dim=1 - unit_axis).indices
        assert bool(mask.gather(1 - unit_axis, top).all())


def test_projection_keeps_the_largest_magnitudes_without_unit_minimum():
    torch.manual_seed(2)
    weight = torch.randn(30, 30)
    mask = projection_mask(weight, 90, None, 0)
    assert weight.abs()[mask].min() >= weight.abs()[~mask].max()


def test_per_unit_minimum_rescues_a_weak_unit():
    weight = torch.ones(8, 16)
    weight[:, 5] = 1e-3  # unit 5 (a column, unit_axis=1) would lose every weight to the global top-k
    mask = projection_mask(weight, 64, unit_axis=1, min_per_unit=4)
    assert int(mask[:, 5].sum()) == 4
    assert int(mask.sum()) == 64


def test_projection_is_idempotent():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(3)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_positions=16))
    tensors = sparse_tensors(model)
    project_(tensors, 0.1, 4)
    once = {t.name: t.param.detach().clone() for t in tensors}
    project_(tensors, 0.1, 4)
    for t in tensors:
        assert torch.equal(t.param, once[t.name])
        protected = 4 * t.param.shape[t.unit_axis] if t.unit_axis is not None else 0
        assert int(torch.count_nonzero(t.param)) <= max(kept_count(t.param.numel(), 0.1), protected)


def test_gpt2_sparse_tensors_and_tied_unembedding():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=3, n_embd=32, n_head=4, n_positions=16))
    names = [t.name for t in sparse_tensors(model)]
    assert len(names) == 3 * 4 + 2
    assert "transformer.wte.weight" in names and "transformer.wpe.weight" in names
    assert not any("ln" in n or "bias" in n for n in names)
    assert len(sparse_tensors(model, embeddings=False)) == 12
    project_(sparse_tensors(model), 0.05, 1)  # at width 32, 4 per unit would floor density at 1/8
    # lm_head is tied to wte, so it follows the projection without being listed
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    density, _, _ = measured_density(sparse_tensors(model))
    assert density <= 0.05 + 1e-3


def test_density_floor_is_four_over_fan_in():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=1, n_embd=256, n_head=16, n_positions=16))
    assert density_floor(sparse_tensors(model, embeddings=False), 4) == pytest.approx(4 / 256)


@pytest.mark.parametrize("shape", ["linear", "log", "cubic"])
def test_density_schedule_endpoints_and_monotone(shape):
    target = 1 / 32
    values = [density_at(p / 100, target, 0.5, shape) for p in range(101)]
    assert values[0] == pytest.approx(1.0)
    assert all(v == pytest.approx(target) for v in values[50:])
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_density_schedule_shapes():
    target = 1 / 64
    assert density_at(0.25, target, 0.5, "linear") == pytest.approx((1 + target) / 2)
    assert density_at(0.25, target, 0.5, "log") == pytest.approx(math.sqrt(target))
    assert density_at(0.25, target, 0.5, "cubic") == pytest.approx(target + (1 - target) / 8)
    assert density_at(0.0, target, 0.0, "log") == pytest.approx(target)  # no anneal: straight to target
    assert density_at(0.3, 1.0, 0.5, "log") == 1.0
    assert density_at(0.9, 1 / 8, 0.5, "log") == 1 / 8  # exactly, so top-k keeps exactly numel/8
    assert kept_count(65536, math.exp(math.log(1 / 8))) == 8192


def test_learning_rate_schedule_and_sharkfin():
    assert base_lr_factor(0.0, 0.1) == 0.0
    assert base_lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert base_lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert base_lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert base_lr_factor(1.0, 0.1) == pytest.approx(0.0)
    assert sharkfin_factor(1.0, 1 / 64) == pytest.approx(1 / 8)
    assert sharkfin_factor(1 / 64, 1 / 64) == pytest.approx(1.0)
    assert sharkfin_factor(1.0, 1 / 64, power=1.0) == pytest.approx(1 / 64)
    assert sharkfin_factor(1 / 16, 1 / 64, power=1.0) == pytest.approx(1 / 4)
    assert sharkfin_factor(1 / 64, 1 / 64, power=1.0) == pytest.approx(1.0)


def test_gradients_rescaled_to_unit_rms():
    a = torch.nn.Parameter(torch.zeros(10))
    b = torch.nn.Parameter(torch.zeros(3, 5))
    a.grad = torch.full((10,), 3.0)
    b.grad = torch.full((3, 5), -6.0)
    old = rescale_gradients_to_unit_rms([a, b])
    assert old == pytest.approx(math.sqrt((10 * 9 + 15 * 36) / 25))
    rms = torch.sqrt((a.grad.pow(2).sum() + b.grad.pow(2).sum()) / 25)
    assert float(rms) == pytest.approx(1.0)
    assert float(b.grad[0, 0] / a.grad[0]) == pytest.approx(-2.0)  # direction kept


def test_embedding_density_keeps_the_overall_budget():
    from transformers import GPT2Config, GPT2LMHeadModel

    from extract.sparsity import final_densities

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_positions=16))
    tensors = sparse_tensors(model)
    finals = final_densities(tensors, 1 / 16, 1 / 8)
    embeddings = [f for t, f in zip(tensors, finals) if t.unit_axis is None]
    matrices = {f for t, f in zip(tensors, finals) if t.unit_axis is not None}
    assert embeddings and all(f == 1 / 8 for f in embeddings) and len(matrices) == 1
    assert matrices.pop() < 1 / 16  # the matrices pay for the denser embeddings
    project_(tensors, finals, min_per_unit=0)
    density, _, _ = measured_density(tensors)
    # each tensor rounds its count up, so the total may exceed the budget by one per tensor
    assert 1 / 16 <= density <= 1 / 16 + len(tensors) / sum(t.param.numel() for t in tensors)
    with pytest.raises(ValueError, match="no budget"):
        final_densities(tensors, 1 / 64, 1.0)


def test_ties_at_the_cut_keep_exactly_k_taking_the_first_in_storage_order():
    weight = torch.tensor([[3.0, 1.0, -1.0, 1.0], [0.0, -1.0, 2.0, 0.0]])
    mask = projection_mask(weight, 4, None, 0)  # 3 and 2, then two of the four 1s
    assert mask.tolist() == [[True, True, True, False], [False, False, True, False]]
    # more zeros than there is room to drop (a sparse weight projected again): still exactly k
    sparse = torch.zeros(6, 6)
    sparse[2, 3] = 0.5
    assert int(projection_mask(sparse, 5, None, 0).sum()) == 5 and projection_mask(sparse, 5, None, 0)[2, 3]


@pytest.mark.parametrize("k", [1, 7, 50, 51, 93, 100])
def test_the_gpu_way_to_the_cut_finds_the_same_kth_largest_value(k):
    """On a GPU the cut comes from topk of the smaller side (kthvalue there runs on one SM); it must be
    the value kthvalue finds, ties included, so both devices keep the same entries."""
    from extract.projection import kth_largest

    torch.manual_seed(4)
    flat = torch.randn(100).abs().round(decimals=1)  # plenty of ties
    assert float(kth_largest(flat, k, by_topk=True)) == float(kth_largest(flat, k, by_topk=False))
    assert float(kth_largest(flat, k, by_topk=False)) == float(flat.sort(descending=True).values[k - 1])


def test_units_at_minimum_counts_the_units_the_floor_chose():
    from tests.families import tiny_model

    model = tiny_model("gpt2")
    tensors = [t for t in sparse_tensors(model, embeddings=True) if t.unit_axis is not None]
    units = sum(t.param.shape[t.unit_axis] for t in tensors)
    assert units_at_minimum(tensors, 2) == {"units": units, "at_minimum": 0, "min_per_unit": 2}  # dense
    project_(tensors, 1e-6, min_per_unit=2)  # a density so low the floor decides every unit
    assert units_at_minimum(tensors, 2)["at_minimum"] == units
    first = tensors[0]
    with torch.no_grad():  # give one unit of the first matrix a third nonzero
        first.param.select(first.unit_axis, 0).fill_(1.0)
    assert units_at_minimum(tensors, 2)["at_minimum"] == units - 1
