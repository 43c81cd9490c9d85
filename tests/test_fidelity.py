"""Fidelity of a sparse model to its dense source (extract/fidelity.py), on tiny real GPT-2s."""
import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from extract.arch import sparse_tensors
from extract.fidelity import fidelity, linear_r2, representation_match, weight_overlap


def _gpt2(seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=64, n_layer=2, n_embd=32, n_head=4, n_positions=16, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config).eval()


def _pruned(model, density: float, keep=lambda dense: dense.abs()):
    """A copy of `model` with each sparsified tensor cut to its `density` largest by `keep`."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for tensor in sparse_tensors(out):
            flat = tensor.param.view(-1)
            count = max(1, int(density * flat.numel()))
            cut = torch.ones_like(flat, dtype=torch.bool)
            cut[keep(flat).topk(count).indices] = False
            flat[cut] = 0.0
    return out


def test_the_dense_models_own_largest_weights_overlap_fully_and_a_random_pick_at_the_density():
    dense = _gpt2(0)
    own = weight_overlap(dense, _pruned(dense, 0.25))
    assert own["among_dense_largest"] == 1.0 and own["sign_agreement"] == 1.0
    assert own["norm_ratio"] == pytest.approx(1.0)
    assert {row["tensor"] for row in own["tensors"]} == {t.name for t in sparse_tensors(dense)}
    assert all(row["density"] == pytest.approx(0.25, abs=0.01) for row in own["tensors"])

    generator = torch.Generator().manual_seed(0)
    random = weight_overlap(dense, _pruned(dense, 0.25, lambda w: torch.rand(w.shape, generator=generator)))
    assert 0.2 < random["among_dense_largest"] < 0.3  # a random pick lands among the largest at the density
    assert random["sign_agreement"] == 1.0 and random["norm_ratio"] < 1.0

    # the embeddings picked at random, the matrices by magnitude: "matrices" leaves the embeddings out
    mixed = _pruned(dense, 0.25)
    with torch.no_grad():
        mixed.transformer.wte.weight.copy_(_pruned(dense, 0.25, lambda w: torch.rand(w.shape, generator=generator))
                                           .transformer.wte.weight)
    overlap = weight_overlap(dense, mixed)
    assert overlap["matrices"] == {"among_dense_largest": 1.0, "sign_agreement": 1.0, "norm_ratio": pytest.approx(1.0)}
    assert overlap["among_dense_largest"] < 1.0


def test_flipped_signs_and_grown_weights_show_in_sign_agreement_and_norm_ratio():
    dense = _gpt2(0)
    sparse = _pruned(dense, 0.1)
    with torch.no_grad():
        for tensor in sparse_tensors(sparse):
            tensor.param.mul_(-3.0)
    moved = weight_overlap(dense, sparse)
    assert moved["among_dense_largest"] == 1.0 and moved["sign_agreement"] == 0.0
    assert moved["norm_ratio"] == pytest.approx(3.0)


def test_a_linear_map_is_scored_on_examples_it_was_not_fitted_on():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=generator)
    mixed = x @ torch.randn(8, 6, generator=generator)
    assert linear_r2(x[:200], mixed[:200], x[200:], mixed[200:]) == pytest.approx(1.0, abs=1e-6)
    noise = torch.randn(400, 6, generator=generator)  # unrelated to x: in-sample R^2 is positive, out of sample not
    assert linear_r2(x[:20], noise[:20], x[:20], noise[:20]) > 0.2
    assert linear_r2(x[:20], noise[:20], x[200:], noise[200:]) < 0.05


def test_representation_match_is_one_for_the_model_itself_and_lower_for_another():
    dense, other = _gpt2(0), _gpt2(1)
    blocks = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    itself = representation_match(dense, dense, blocks)
    assert [s["site"] for s in itself] == ["embeddings", "block 0", "block 1"]
    assert all(s["r2"] > 0.999 for s in itself)
    against = representation_match(dense, other, blocks)
    assert all(s["r2"] < 0.99 for s in against)
    with pytest.raises(ValueError, match="at least 2 held-out blocks"):
        representation_match(dense, other, blocks[:1])


def test_fidelity_gathers_both_with_the_split_it_used():
    dense = _gpt2(0)
    blocks = torch.randint(0, 64, (5, 16), generator=torch.Generator().manual_seed(2))
    result = fidelity(dense, _pruned(dense, 0.5), blocks, min_per_unit=20)
    assert result["weights"]["among_dense_largest"] == 1.0
    units = result["weights"]["units_at_minimum"]  # q/k/v, value channels, neurons in and out, per layer
    assert units["units"] == 2 * (3 * 32 + 32 + 128 + 128) and 0 < units["at_minimum"] < units["units"]
    representation = result["representation"]
    assert (representation["fit_blocks"], representation["scored_blocks"]) == (2, 3)
    assert representation["mean_r2"] == pytest.approx(sum(s["r2"] for s in representation["sites"]) / 3)
