"""Is node j of every site the channel that the edge matrices say it is? Checked on every family variant
(tests/families.py) from what transformers' forward pass does, not from extract's own reading of it.

- Feeders: move the weights that an edge matrix says feed node j; among that matrix's output sites only
  node j moves.
- Readers: push node j through its hook; what the matrices that read its site compute moves, and stops
  moving once the weights the edge matrices say read node j are zeroed.
- Attention roles: a q, k or v node pushed at the first position alone does what causal attention does
  with a query (nothing: the first token attends to itself alone), a key (later positions move, the
  first does not) or a value (the first position moves). This names the sites, which the two checks
  above cannot: they would pass with k and v swapped in both the sites and the matrices.
- Exactness, the point of it all: the weights feeding removed nodes do not change what a circuit
  computes, bit for bit, while the weights between kept nodes do.
"""
from contextlib import contextmanager

import pytest
import torch

from extract.arch import family_of, node_sites
from extract.circuits.edges import in_out_weight
from extract.circuits.masks import NodeMask
from extract.circuits.sites import hooked, site_means
from tests.families import VARIANTS, tiny_model

MOVED = 1e-4  # a node or logit moved by more than this moved
STILL = 1e-6  # ... and one that should not move stays within this (float noise; most are bit-identical)


def _ids(seed: int = 2) -> torch.Tensor:
    return torch.randint(1, 101, (2, 7), generator=torch.Generator().manual_seed(seed))


def _record(model, sites, ids, push=None):
    """({site key: activation as its hook sees it}, logits). `push`: {site key: (channel, delta,
    position)} adds delta to one channel at one position (None: every position) before recording."""
    seen = {}

    def edit(site, x):
        if push and site.key in push:
            channel, delta, position = push[site.key]
            x = x.clone()
            if position is None:
                x[..., channel] += delta
            else:
                x[:, position, channel] += delta
        seen[site.key] = x.detach().clone()
        return x

    with torch.no_grad(), hooked(model, sites, edit):
        logits = model(input_ids=ids).logits
    return seen, logits


def _channels(width: int) -> list[int]:
    """A few channels of a site: the first, one past the middle (odd, so not a head boundary) and the last."""
    return sorted({0, width // 2 + 1, width - 1})


def _axis_positions(keys: tuple[str, ...], nodes: tuple[int, ...] | None, widths: dict[str, int], key: str,
                    channel: int) -> list[int]:
    """The positions along one axis of an edge matrix that carry channel `channel` of site `key`."""
    node = sum(widths[k] for k in keys[: keys.index(key)]) + channel
    return [node] if nodes is None else [p for p, n in enumerate(nodes) if n == node]


def _moved_channels(before: torch.Tensor, after: torch.Tensor, threshold: float) -> set[int]:
    change = (after - before).abs().flatten(0, -2).amax(0)
    return set(torch.nonzero(change > threshold).flatten().tolist())


@contextmanager
def _restored(*weights: torch.Tensor):
    """Weights edited in place inside the block get their values back on exit."""
    saved = [w.clone() for w in weights]
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, original in zip(weights, saved):
                weight.copy_(original)


def _model(variant):
    """(model, its sites, their widths by key, its parameters by name)."""
    model = tiny_model(variant)
    sites = node_sites(model)
    return model, sites, {s.key: s.width for s in sites}, dict(model.named_parameters())


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_weights_feeding_a_node_move_that_node_alone(variant):
    model, sites, widths, params = _model(variant)
    ids = _ids()
    base, _ = _record(model, sites, ids)
    noise = torch.Generator().manual_seed(0)
    for matrix in family_of(model).edge_matrices(model):
        weight = in_out_weight(matrix, params)  # a view: editing it edits the parameter
        for key in matrix.outputs:
            for channel in _channels(widths[key]):
                columns = _axis_positions(matrix.outputs, matrix.output_nodes, widths, key, channel)
                with _restored(weight):
                    with torch.no_grad():
                        weight[:, columns] += torch.randn(weight.shape[0], len(columns), generator=noise)
                    seen, _ = _record(model, sites, ids)
                for out in matrix.outputs:
                    moved = _moved_channels(base[out], seen[out], STILL)
                    expected = {channel} if out == key else set()
                    assert moved == expected, (f"{matrix.weight}: moving what feeds {key}:{channel} moved {out} "
                                               f"channels {sorted(moved)[:8]}")
                    if out == key:
                        assert _moved_channels(base[out], seen[out], MOVED) == {channel}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_node_reaches_downstream_only_through_the_weights_that_read_it(variant):
    model, sites, widths, params = _model(variant)
    matrices = family_of(model).edge_matrices(model)
    ids = _ids()
    read = sorted({key for m in matrices for key in m.inputs})
    assert {key.split(".")[1] for key in read} == {"attn_in", "mlp_in", "v", "mlp"}
    for key in read:
        readers = [m for m in matrices if key in m.inputs]
        outputs = sorted({out for m in readers for out in m.outputs})
        for channel in _channels(widths[key]):
            push = {key: (channel, 3.0, None)}
            base, _ = _record(model, sites, ids)
            pushed, _ = _record(model, sites, ids, push)
            assert any(_moved_channels(base[o], pushed[o], MOVED) for o in outputs), (
                f"pushing {key}:{channel} moved none of {outputs}, which the edge matrices say read it")
            weights = [in_out_weight(m, params) for m in readers]
            with _restored(*weights):
                with torch.no_grad():
                    for m, weight in zip(readers, weights):
                        weight[_axis_positions(m.inputs, m.input_nodes, widths, key, channel), :] = 0
                base, _ = _record(model, sites, ids)
                pushed, _ = _record(model, sites, ids, push)
            for out in outputs:
                moved = _moved_channels(base[out], pushed[out], STILL)
                assert not moved, (f"with the weights reading {key}:{channel} zeroed, pushing it still moved "
                                   f"{out} channels {sorted(moved)[:8]}: something else reads it")


@pytest.mark.parametrize("variant", VARIANTS)
def test_q_k_and_v_nodes_do_what_causal_attention_does_with_them(variant):
    model = tiny_model(variant)
    sites = node_sites(model)
    ids = _ids()
    _, base = _record(model, sites, ids)
    for site in (s for s in sites if s.name in ("q", "k", "v")):
        for channel in _channels(site.width):
            _, logits = _record(model, sites, ids, {site.key: (channel, 50.0, 0)})  # far beyond its spread
            change = (logits - base).abs().amax(dim=(0, 2))  # per position
            first, later = float(change[0]), float(change[1:].max())
            where = f"{site.key}:{channel} pushed at the first position"
            if site.name == "q":  # the first token's only key is itself: its query changes nothing
                assert first <= STILL and later <= STILL, f"{where} moved the logits ({first:.2e}, {later:.2e})"
            elif site.name == "k":  # later queries score the first key differently; the first attends to itself
                assert first <= STILL and later > MOVED, f"{where}: first {first:.2e}, later {later:.2e}"
            else:  # the first position's output is its own value
                assert first > MOVED, f"{where} left the first position's logits alone ({first:.2e})"


def _circuit(model, seed: int = 0):
    """(sites, mask with means, random gates keeping about half of every site)."""
    sites = node_sites(model)
    blocks = torch.randint(0, 101, (12, 10), generator=torch.Generator().manual_seed(1))
    mask = NodeMask(sites, site_means(model, sites, blocks))
    draw = torch.Generator().manual_seed(seed)
    return sites, mask, {s.key: (torch.rand(s.width, generator=draw) < 0.5).float() for s in sites}


def _masked_logits(model, mask, gates, ids):
    with torch.no_grad(), mask.with_gates(model, gates):
        return model(input_ids=ids).logits


def _scale_weights(model, gates, feeding_kept: bool):
    """Triple every edge-matrix weight whose output node is kept (`feeding_kept`) or removed."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for matrix in family_of(model).edge_matrices(model):
            weight = in_out_weight(matrix, params)
            flags = torch.cat([gates[key].bool() for key in matrix.outputs])
            if matrix.output_nodes is not None:
                flags = flags[torch.tensor(matrix.output_nodes)]
            weight[:, flags if feeding_kept else ~flags] *= 3.0


@pytest.mark.parametrize("variant", VARIANTS)
def test_weights_feeding_removed_nodes_do_not_change_what_a_circuit_computes(variant):
    """A circuit's logits depend on no weight outside its edges except through the means that removed
    nodes are held at, so its checks and edge count are about the same thing."""
    ids = _ids(5)
    model = tiny_model(variant)
    _, mask, gates = _circuit(model)
    before = _masked_logits(model, mask, gates, ids)
    _scale_weights(model, gates, feeding_kept=False)
    assert torch.equal(_masked_logits(model, mask, gates, ids), before)
    _scale_weights(model, gates, feeding_kept=True)  # the circuit's own weights do matter
    assert float((_masked_logits(model, mask, gates, ids) - before).abs().max()) > MOVED


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v.split("-")[0] in ("llama", "mistral", "qwen2",
                                                                                "qwen3")])
def test_a_kept_query_channel_ignores_the_removed_channels_of_its_head(variant):
    """Issue 28's measurement: keep query channel 0 of head 0, remove the rest of that head, and triple
    the removed channels' q_proj rows. Before the fix Qwen3's logits moved by 1.3e-2 (its q node was
    after the per-head norm, whose RMS reads every channel of the head); now they do not move."""
    model = tiny_model(variant)
    sites, mask, _ = _circuit(model)
    gates = {s.key: torch.ones(s.width) for s in sites}
    head_dim = model.model.layers[0].self_attn.head_dim
    gates["0.q"][1:head_dim] = 0
    ids = _ids(5)
    before = _masked_logits(model, mask, gates, ids)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[1:head_dim] *= 3.0
    assert torch.equal(_masked_logits(model, mask, gates, ids), before)
