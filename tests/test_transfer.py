"""Bridged interventions (extract/circuits/transfer.py) on tiny models: what an edit carries, and what a
null edit does not."""
import copy

import torch
from families import tiny_model

from extract.bridges import Bridges
from extract.circuits.sites import hooked, node_sites
from extract.circuits.transfer import (
    PairBatch,
    _logit_difference,
    bridged_transfer,
    dense_moves,
    dense_patch,
    pair_batch,
    random_gates_of_size,
    sparse_deltas,
)
from extract.tasks.examples import TaskExample


def _pairs(n=6, length=9, seed=0, vocab=101):
    """Pairs of prompts that differ in one token, answers swapped (as the built-in tasks are laid out)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(3, vocab, (length + i % 3,), generator=g).tolist()
        other = list(prompt)
        other[1] = (other[1] + 7) % vocab
        out += [TaskExample(tuple(prompt), 1, 2), TaskExample(tuple(other), 2, 1)]
    return out


def _gates(model, keys):
    return {s.key: (torch.ones(s.width) if s.key in keys else torch.zeros(s.width)) for s in node_sites(model)}


def test_an_edit_with_no_difference_moves_nothing():
    dense = tiny_model("gpt2")
    sparse, batch = tiny_model("gpt2", seed=1), pair_batch(_pairs())
    bridges = Bridges.for_models(dense, sparse, init="random")
    sites = node_sites(sparse)
    with torch.no_grad():
        empty = sparse_deltas(sparse, sites, _gates(sparse, ()), batch)  # no node swapped
        assert all(torch.equal(d, torch.zeros_like(d)) for d in empty.values())
        assert set(dense_moves(dense, bridges, empty, batch, dense_patch(dense, batch)).values()) == {0.0}
        same = PairBatch(batch.first, batch.first, batch.target, batch.alternative)  # each prompt with itself
        every = _gates(sparse, [s.key for s in sites])
        assert all(torch.equal(d, torch.zeros_like(d)) for d in sparse_deltas(sparse, sites, every, same).values())


def test_a_decoded_edit_through_identity_bridges_is_the_dense_models_own_swap():
    """Sparse = dense and identity bridges: a swap of nodes all before the last bridge site, carried
    through that site, moves the dense model exactly as swapping the same nodes in it does."""
    dense = tiny_model("gpt2")
    sparse, bridges = copy.deepcopy(dense), Bridges.for_models(dense, dense)
    batch = pair_batch(_pairs())
    gates = _gates(dense, ["0.q", "0.v", "0.mlp", "1.k", "1.attn_out"])
    sites = node_sites(dense)
    with torch.no_grad():
        deltas = sparse_deltas(sparse, sites, gates, batch)
        moves = dense_moves(dense, bridges, deltas, batch, dense_patch(dense, batch))
        clean = _logit_difference(dense, batch.first, batch)
        donor = {}
        chosen = [s for s in sites if gates[s.key].any()]
        with hooked(dense, chosen, lambda site, x: donor.__setitem__(site.key, x) or x):
            full = (_logit_difference(dense, batch.second, batch) - clean).sum()
        with hooked(dense, chosen, lambda site, x: donor[site.key]):
            swapped = (_logit_difference(dense, batch.first, batch) - clean).sum()
    assert abs(moves["1.mlp"] - float(swapped / full)) < 1e-4
    assert abs(moves["1.mlp"]) > 0.01  # the swap does something, so the comparison is not 0 = 0


def test_transfer_picks_its_site_on_validation_and_draws_random_controls_of_the_circuits_size():
    dense = tiny_model("gpt2")
    sparse, bridges = copy.deepcopy(dense), Bridges.for_models(dense, dense)
    gates = _gates(dense, ["0.mlp", "1.v"])
    gates["0.mlp"][::2] = 0.0  # half the neurons: a random draw of as many is another set
    figures = bridged_transfer(dense, sparse, bridges, node_sites(dense), gates, _pairs(seed=1), _pairs(seed=2),
                               draws=3)
    assert figures["site"] in figures["per_site"] and figures["fraction"] == figures["per_site"][figures["site"]]
    assert figures["test_pairs"] == 6 and figures["random_draws"] == 3
    again = bridged_transfer(dense, sparse, bridges, node_sites(dense), gates, [], _pairs(seed=2), draws=3,
                             site=figures["site"])
    assert again["fraction"] == figures["fraction"] and again["random_mean"] == figures["random_mean"]
    random_gates = random_gates_of_size(gates, torch.Generator().manual_seed(0))
    assert {k: int(g.sum()) for k, g in random_gates.items()} == {k: int(g.sum()) for k, g in gates.items()}
    assert not all(torch.equal(random_gates[k], gates[k]) for k in gates)


def test_pairs_of_different_lengths_are_left_out():
    examples = [TaskExample((5, 6, 7), 1, 2), TaskExample((5, 6), 2, 1)] + _pairs(n=1)
    assert pair_batch(examples).size == 2  # the one same-length pair, both ways round
    assert pair_batch(examples[:2]) is None
