"""Circuit groundwork on a tiny real GPT-2: hooks, masks, mean ablation, surrogate gradient, edges."""
import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from extract.circuits.edges import count_edges
from extract.circuits.masks import NodeMask, heaviside_ste
from extract.circuits.sites import count_nodes, node_sites, site_means


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_layer=2, n_embd=16, n_head=4, n_positions=12, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def blocks():
    torch.manual_seed(1)
    return torch.randint(0, 50, (20, 12))


def _with_mask(model, mask, ids):
    handles = mask.attach(model)
    try:
        return model(input_ids=ids).logits
    finally:
        for handle in handles:
            handle.remove()


def test_node_count_per_layer(model):
    sites = node_sites(model)
    d, n_head, d_head, d_mlp = 16, 4, 4, 64
    assert count_nodes(sites) == 2 * (4 * d + 3 * n_head * d_head + d_mlp)


def test_all_on_mask_is_exactly_the_unmodified_model(model, blocks):
    sites = node_sites(model)
    mask = NodeMask(sites, site_means(model, sites, blocks))
    ids = blocks[:3]
    assert torch.equal(_with_mask(model, mask, ids), model(input_ids=ids).logits)


def test_all_off_mask_leaves_only_embeddings_plus_mean_writes(model, blocks):
    sites = node_sites(model)
    means = site_means(model, sites, blocks)
    mask = NodeMask(sites, means)
    mask.override = {s.key: torch.zeros(s.width) for s in sites}
    ids = blocks[:3]
    # by hand: every residual write is its mean, so the stream is embeddings + the sum of the means
    t = model.transformer
    stream = t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))
    for layer in range(model.config.n_layer):
        stream = stream + means[f"{layer}.attn_out"] + means[f"{layer}.mlp_out"]
    expected = model.lm_head(t.ln_f(stream))
    torch.testing.assert_close(_with_mask(model, mask, ids), expected, rtol=1e-5, atol=1e-5)


def test_site_means_match_a_direct_computation(model, blocks):
    sites = node_sites(model)
    means = site_means(model, sites, blocks)
    t = model.transformer
    first_read = t.h[0].ln_1(t.wte(blocks) + t.wpe(torch.arange(blocks.shape[1])))
    torch.testing.assert_close(means["0.attn_in"], first_read.reshape(-1, 16).mean(0), rtol=1e-5, atol=1e-6)


def test_surrogate_gradient(model, blocks):
    tau = torch.tensor([-0.5, 0.0, 0.1, 0.7], requires_grad=True)
    gate = heaviside_ste(tau)
    assert gate.tolist() == [0.0, 0.0, 1.0, 1.0]
    gate.sum().backward()
    sig = torch.sigmoid(tau.detach())
    torch.testing.assert_close(tau.grad, sig * (1 - sig))

    sites = node_sites(model)
    mask = NodeMask(sites, site_means(model, sites, blocks))
    logits = _with_mask(model, mask, blocks[:4])
    loss = F.cross_entropy(logits[:, -1], blocks[:4, 0]) + 1e-3 * mask.kept()
    loss.backward()
    for site in sites:
        grad = mask.tau(site).grad
        assert grad is not None and bool(grad.abs().gt(0).any()), site.key


def test_clamp_keeps_tau_in_unit_interval(model, blocks):
    sites = node_sites(model)
    mask = NodeMask(sites, site_means(model, sites, blocks))
    with torch.no_grad():
        for tau in mask.taus.values():
            tau.mul_(100)
    mask.clamp_()
    assert all(float(t.detach().abs().max()) <= 1.0 for t in mask.taus.values())


def test_edge_count_on_a_hand_built_model():
    config = GPT2Config(vocab_size=10, n_layer=1, n_embd=4, n_head=2, n_positions=4, n_inner=8)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            model.get_submodule(f"transformer.h.0.{name}").weight.zero_()
        block = model.transformer.h[0]
        block.mlp.c_fc.weight[0, 3] = 1.0  # mlp_in 0 -> neuron 3
        block.mlp.c_fc.weight[1, 3] = -2.0  # mlp_in 1 -> neuron 3 (mlp_in 1 dropped below)
        block.mlp.c_proj.weight[3, 2] = 0.5  # neuron 3 -> mlp_out 2
        block.attn.c_attn.weight[2, 8 + 1] = 1.0  # attn_in 2 -> v 1
        block.attn.c_attn.weight[2, 0] = 1.0  # attn_in 2 -> q 0 (q 0 dropped below)
        block.attn.c_proj.weight[1, 0] = 3.0  # v 1 -> attn_out 0
    on = lambda n, idx: torch.tensor([i in idx for i in range(n)])  # noqa: E731
    kept = {"0.attn_in": on(4, {2}), "0.q": on(4, set()), "0.k": on(4, set()), "0.v": on(4, {1}),
            "0.attn_out": on(4, {0}), "0.mlp_in": on(4, {0}), "0.mlp": on(8, {3}), "0.mlp_out": on(4, {2})}
    assert count_edges(model, kept) == 4
    # a dense model: every kept pair across a matrix is an edge
    dense = GPT2LMHeadModel(config)
    all_kept = {k: torch.ones_like(v) for k, v in kept.items()}
    assert count_edges(dense, all_kept) == 4 * 12 + 4 * 4 + 4 * 8 + 8 * 4
