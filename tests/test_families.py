"""Every supported family on tiny random models: sites, masks, projection axes, edges, sparsify and prune.

The checks are the same for every family; what differs (where the embeddings and final norm are,
which stored axis indexes a unit) is written out here independently of extract/arch, so a wrong
mapping there fails a test rather than agreeing with itself.
"""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from extract.arch import ArchitectureError, family_of, node_sites, sparse_tensors
from extract.circuits.edges import count_edges, list_edges
from extract.circuits.masks import NodeMask
from extract.circuits.sites import count_nodes, site_means
from extract.models import ModelLoadError
from extract.projection import kept_count
from extract.sparsity import project_
from tests.conftest import fit_two_way_task, quote_lines, run_cli
from tests.families import (
    D_MLP,
    D_MODEL,
    FAMILIES,
    HEAD_DIM,
    HEADS,
    LAYERS,
    VARIANTS,
    nodes_per_layer,
    tiny_model,
)

LLAMA_LIKE = ["llama", "mistral", "qwen2", "qwen3"]


def _family(variant):
    """The model_type a variant is built as (`llama-biases` is a llama)."""
    return variant.split("-")[0]


def _ends(model, variant):
    """(embedded input ids -> residual stream, final norm) for an independent forward pass."""
    variant = _family(variant)
    if variant == "gpt2":
        t = model.transformer
        return (lambda ids: t.wte(ids) + t.wpe(torch.arange(ids.shape[1]))), t.ln_f
    if variant == "gpt_neox":
        return model.gpt_neox.embed_in, model.gpt_neox.final_layer_norm
    return model.model.embed_tokens, model.model.norm


# Which stored axis of each matrix indexes the units (neuron, q/k/v channel, value channel) that keep
# the per-unit minimum: Conv1D stores (in, out), nn.Linear (out, in).
UNIT_AXES = {
    "gpt2": {"attn.c_attn": 1, "attn.c_proj": 0, "mlp.c_fc": 1, "mlp.c_proj": 0},
    "gpt_neox": {"attention.query_key_value": 0, "attention.dense": 1, "mlp.dense_h_to_4h": 0,
                 "mlp.dense_4h_to_h": 1},
    **{v: {"q_proj": 0, "k_proj": 0, "v_proj": 0, "o_proj": 1, "gate_proj": 0, "up_proj": 0, "down_proj": 1}
       for v in LLAMA_LIKE},
}


def _unit_axis(variant, name):
    (axis,) = [axis for suffix, axis in UNIT_AXES[_family(variant)].items() if name.endswith(f"{suffix}.weight")]
    return axis


@pytest.fixture(scope="module")
def blocks():
    torch.manual_seed(1)
    return torch.randint(0, 101, (12, 10))


@pytest.mark.parametrize("variant", VARIANTS)
def test_node_count_matches_the_layout(variant):
    model = tiny_model(variant)
    sites = node_sites(model)
    assert count_nodes(sites) == LAYERS * nodes_per_layer(variant)
    assert {s.name for s in sites if s.layer == 1} == {"attn_in", "q", "k", "v", "attn_out", "mlp_in", "mlp", "mlp_out"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_on_mask_reproduces_the_logits_exactly(variant, blocks):
    model = tiny_model(variant)
    sites = node_sites(model)
    mask = NodeMask(sites, site_means(model, sites, blocks))
    ids = blocks[:3]
    with mask.applied(model):
        masked = model(input_ids=ids).logits
    assert torch.equal(masked, model(input_ids=ids).logits)


@pytest.mark.parametrize("variant", VARIANTS)
def test_all_off_mask_equals_the_model_with_every_site_at_its_mean(variant, blocks):
    model = tiny_model(variant)
    sites = node_sites(model)
    means = site_means(model, sites, blocks)
    mask = NodeMask(sites, means)
    ids = blocks[:3]
    with mask.with_gates(model, {s.key: torch.zeros(s.width) for s in sites}):
        masked = model(input_ids=ids).logits
    # by hand: every residual write is held at its mean, so the stream is the embeddings plus the
    # sum of those means, whatever the reads, q/k/v and neurons compute
    embed, final_norm = _ends(model, variant)
    stream = embed(ids)
    for layer in range(LAYERS):
        stream = stream + means[f"{layer}.attn_out"] + means[f"{layer}.mlp_out"]
    torch.testing.assert_close(masked, model.lm_head(final_norm(stream)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_site_means_are_the_hooked_activations_averaged(variant, blocks):
    """The q site's mean, checked against the query projection computed outside the hooks."""
    model = tiny_model(variant)
    means = site_means(model, node_sites(model), blocks)
    embed, _ = _ends(model, variant)
    if variant == "gpt2":
        block = model.transformer.h[0]
        q = block.attn.c_attn(block.ln_1(embed(blocks)))[..., :D_MODEL]
    elif _family(variant) == "gpt_neox":
        block = model.gpt_neox.layers[0]
        fused = block.attention.query_key_value(block.input_layernorm(embed(blocks)))
        q = fused.view(*blocks.shape, HEADS, 3, HEAD_DIM)[..., 0, :].flatten(-2)  # head by head: q, k, v
    else:  # the projection's output: before rotary, and before Qwen3's per-head norm
        q = model.model.layers[0].self_attn.q_proj(model.model.layers[0].input_layernorm(embed(blocks)))
    torch.testing.assert_close(means["0.q"], q.reshape(-1, q.shape[-1]).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_left_padded_batch_equals_each_prompt_alone(variant):
    from extract.tasks.examples import TaskExample, last_position_logits

    model = tiny_model(variant)
    torch.manual_seed(3)
    examples = [TaskExample(tuple(torch.randint(1, 101, (n,)).tolist()), 1, 2) for n in (3, 9, 5)]
    alone = torch.stack([model(input_ids=torch.tensor([e.prompt_ids])).logits[0, -1] for e in examples])
    torch.testing.assert_close(last_position_logits(model, examples), alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparsified_tensors_cover_every_matrix_and_each_embedding_once(variant):
    model = tiny_model(variant)
    names = [t.name for t in sparse_tensors(model)]
    matrices = [n for n in names if any(n.endswith(f"{s}.weight") for s in UNIT_AXES[_family(variant)])]
    assert len(matrices) == LAYERS * len(UNIT_AXES[_family(variant)])
    assert not any("norm" in n or "ln" in n.split(".")[-2] or n.endswith(".bias") for n in names)
    embeddings = [t for t in sparse_tensors(model) if t.unit_axis is None]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    expected = 1 + (not tied) + (variant == "gpt2")  # token embedding, an untied lm_head, GPT-2's positions
    assert len(embeddings) == len(names) - len(matrices) == expected
    assert any(t.param is model.get_output_embeddings().weight for t in embeddings)  # the unembedding is covered


@pytest.mark.parametrize("variant", VARIANTS)
def test_projection_keeps_the_per_unit_minimum_on_the_unit_axis(variant):
    """One unit of every matrix gets only tiny weights: the global top-k alone would drop it whole,
    so it keeps its minimum only if the projection counts along the right axis."""
    model = tiny_model(variant)
    tensors = [t for t in sparse_tensors(model) if t.unit_axis is not None]
    with torch.no_grad():
        for t in tensors:
            t.param.select(_unit_axis(variant, t.name), 0).mul_(1e-4)
    project_(tensors, 0.02, min_per_unit=3)
    for t in tensors:
        axis = _unit_axis(variant, t.name)
        assert t.unit_axis == axis, t.name
        per_unit = (t.param != 0).sum(dim=1 - axis)
        assert int(per_unit[0]) == 3 and int(per_unit.min()) >= 3, t.name
        assert int((t.param != 0).sum()) == max(kept_count(t.param.numel(), 0.02), 3 * t.param.shape[axis])


def _zero_matrices(model):
    with torch.no_grad():
        for t in sparse_tensors(model, embeddings=False):
            t.param.zero_()


def _all_kept(model):
    return {s.key: torch.ones(s.width, dtype=torch.bool) for s in node_sites(model)}


@pytest.mark.parametrize("variant", LLAMA_LIKE)
def test_edges_on_a_hand_set_llama_pattern_with_a_shared_value_channel(variant):
    """4 query heads over 2 kv heads: query heads 2 and 3 both read kv head 1, so value channel
    1 * 6 + 4 = 10 reaches attn_out 1 through two o_proj weights, one per head: two edges."""
    model = tiny_model(variant)
    _zero_matrices(model)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    with torch.no_grad():
        attn.q_proj.weight[5, 2] = 1.0  # attn_in 2 -> q 5
        attn.v_proj.weight[10, 2] = 1.0  # attn_in 2 -> v 10
        attn.o_proj.weight[1, 2 * HEAD_DIM + 4] = 0.5  # v 10, through query head 2 -> attn_out 1
        attn.o_proj.weight[1, 3 * HEAD_DIM + 4] = -0.5  # v 10, through query head 3 -> attn_out 1
        mlp.gate_proj.weight[7, 0] = 1.0  # mlp_in 0 -> neuron 7 through gate ...
        mlp.up_proj.weight[7, 0] = 2.0  # ... and through up: two edges
        mlp.down_proj.weight[3, 7] = 1.0  # neuron 7 -> mlp_out 3
    kept = _all_kept(model)
    assert count_edges(model, kept) == 7
    listed = [e for e in list_edges(model, kept) if e["to"] == ["0.attn_out", 1]]
    assert sorted((e["from"][1], e["head"], e["weight"]) for e in listed) == [(10, 2, 0.5), (10, 3, -0.5)]
    kept["0.v"][10] = False  # the shared value channel out: both of its o_proj edges and its v_proj edge go
    assert count_edges(model, kept) == 4
    kept["0.mlp"][7] = False  # the neuron out: gate, up and down edges go
    assert count_edges(model, kept) == 1
    # a dense model is counted by the same rule: every kept pair across every matrix
    dense = tiny_model(variant)
    n_kv = HEAD_DIM * 2
    per_layer = (D_MODEL * (HEADS * HEAD_DIM + 2 * n_kv) + HEADS * HEAD_DIM * D_MODEL + 3 * D_MODEL * D_MLP)
    assert count_edges(dense, _all_kept(dense)) == LAYERS * per_layer


def test_edges_on_a_hand_set_gpt_neox_pattern_follow_its_per_head_layout():
    """query_key_value rows run head by head (q, k, v of head 0, then head 1, ...): row 1 * 18 + 6 + 2
    is head 1's k channel 2, which is k node 1 * 6 + 2 = 8."""
    model = tiny_model("gpt_neox")
    _zero_matrices(model)
    attention = model.gpt_neox.layers[0].attention
    with torch.no_grad():
        attention.query_key_value.weight[1 * 3 * HEAD_DIM + HEAD_DIM + 2, 3] = 1.0  # attn_in 3 -> k 8
        attention.query_key_value.weight[2 * HEAD_DIM + 1, 5] = -1.0  # head 0's v channel 1: attn_in 5 -> v 1
        attention.dense.weight[4, 1] = 2.0  # v 1 -> attn_out 4
    edges = list_edges(model, _all_kept(model))
    assert sorted((e["from"], e["to"]) for e in edges) == [
        (["0.attn_in", 3], ["0.k", 8]), (["0.attn_in", 5], ["0.v", 1]), (["0.v", 1], ["0.attn_out", 4])]
    kept = _all_kept(model)
    kept["0.k"][8] = False
    assert count_edges(model, kept) == 2


@pytest.mark.slow
def test_an_unmapped_family_fails_before_any_work_and_lists_the_supported_ones(write_recipe, tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    model_dir = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=101, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                             word_embed_proj_dim=16)).save_pretrained(model_dir)
    (model_dir / "model.safetensors").unlink()  # the error comes from the config alone, before any weights load
    with pytest.raises(ArchitectureError, match="'opt' has no architecture mapping"):
        family_of(OPTForCausalLM(OPTConfig(vocab_size=11, hidden_size=8, num_hidden_layers=1, ffn_dim=8,
                                           num_attention_heads=2, word_embed_proj_dim=8)))
    proc = run_cli("--recipe", write_recipe(), f"model.name_or_path={model_dir}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model.name_or_path" in proc.stderr and "'opt' has no architecture mapping" in proc.stderr
    assert "gpt2, gpt_neox, llama, mistral, qwen2, qwen3" in proc.stderr


# The controls are the same code for every family (tests/test_prune_stage.py checks them); here
# they would only add time.
NO_CONTROLS = ("prune.nonsense_control=false", "prune.attribution_baseline=false", "prune.random_draws=1")


@pytest.fixture(scope="module")
def quote_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("quote-task") / "quotes.jsonl"
    path.write_text("\n".join(quote_lines(300, seed=0)) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("variant", FAMILIES)
def test_sparsify_then_prune_a_saved_model_of_each_family(variant, write_recipe, tmp_path, quote_task):
    """A tiny model of the family, trained in the test to close quotes, is saved; the sparsify stage
    takes it as `model.name_or_path=DIR` and its output reloads with plain transformers, zeros exact;
    then `--stage prune --model DIR --task single_double_quote --task FILE` prunes it."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from extract.paths import TOKENIZER_DIR
    from extract.tasks.jsonl import load_task_file

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    model = tiny_model(variant, vocab_size=len(tokenizer)).train()
    assert fit_two_way_task(model, load_task_file(quote_task, tokenizer, max_context=64)) < 0.05
    dense_dir = tmp_path / f"{variant}-dense"
    model.save_pretrained(dense_dir)
    tokenizer.save_pretrained(dense_dir)

    out = tmp_path / "out"
    run_cli("--recipe", write_recipe(), "--stage", "sparsify", f"model.name_or_path={dense_dir}",
            "train.steps=8", "train.eval_every=8", "sparsity.min_per_unit=2", "sparsity.anneal_fraction=0.5")
    sparse = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    saved = load_file(out / "model" / "model.safetensors")
    tensors = sparse_tensors(sparse)
    for t in tensors:
        if t.name in saved:
            assert torch.equal(t.param, saved[t.name]), t.name  # every zero survives exactly
        density = float((t.param != 0).float().mean())
        floor = 2 / t.param.shape[1 - t.unit_axis] if t.unit_axis is not None else 0  # the per-unit minimum
        assert density <= max(0.125, floor) + 1e-2, (t.name, density)
    head = sparse.get_output_embeddings().weight
    assert float((head != 0).float().mean()) <= 0.125 + 1e-3  # tied or not, the unembedding is sparse

    pruned = tmp_path / "pruned"
    run_cli("--recipe", write_recipe(), "--stage", "prune", "--model", dense_dir, "--task", "single_double_quote",
            "--task", quote_task, f"output_dir={pruned}", "prune.steps=80", "prune.batch_size=32", "prune.lr=0.05",
            "prune.mean_blocks=8", "prune.validation_pairs=20", "prune.test_pairs=20", "prune.train_pairs=40",
            *NO_CONTROLS)
    report = json.loads((pruned / "report.json").read_text())
    assert set(report["tasks"]) == {"single_double_quote", "quotes"}
    builtin = report["tasks"]["single_double_quote"][str(dense_dir)]
    assert 0 <= builtin["full_accuracy"] <= 1  # scored through this family's forward pass
    entry = report["tasks"]["quotes"][str(dense_dir)]
    circuit = entry["circuit"]
    assert entry["solved"] and circuit["sufficient"] and circuit["necessary"], entry
    assert 0 < circuit["nodes"] < LAYERS * nodes_per_layer(variant) and circuit["edges"] > 0
    (circuit_file,) = (pruned / "circuits").glob("quotes.*.json")
    assert len(json.loads(circuit_file.read_text())["edges"]) == circuit["edges"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_saved_density_reads_every_sparsified_tensor_as_saved(variant, tmp_path):
    """GPT-NeoX's unembedding is `lm_head` in the model and `embed_out` in its file: the report's
    density must count it all the same."""
    from extract.report import saved_density
    from extract.sparsity import measured_density

    model = tiny_model(variant)
    project_(sparse_tensors(model), 0.1, min_per_unit=1)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    density, nonzero, count = saved_density(tmp_path, loaded)
    assert count == len(sparse_tensors(model))
    assert density == pytest.approx(measured_density(sparse_tensors(model))[0], abs=1e-9)
    assert nonzero == sum(int(torch.count_nonzero(p)) for p in model.parameters())
    with torch.no_grad():  # the model no longer holds what the files do
        loaded.get_output_embeddings().weight.zero_()
    with pytest.raises(ModelLoadError, match="do not match"):
        saved_density(tmp_path, loaded)


def test_init_config_builds_any_family_and_names_an_unknown_one():
    from extract.models import ModelLoadError, load_model
    from extract.recipe import ModelConfig

    shape = {"model_type": "llama", "hidden_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2,
             "intermediate_size": 37, "num_hidden_layers": 1}
    model = load_model(ModelConfig(init_config=shape), vocab_size=50)
    assert model.config.model_type == "llama" and model.get_input_embeddings().weight.shape == (50, 24)
    assert len(node_sites(model)) == 8
    assert load_model(ModelConfig(init_config={"n_layer": 1, "n_embd": 8, "n_head": 2}), vocab_size=50
                      ).config.model_type == "gpt2"  # the default
    with pytest.raises(ModelLoadError, match=r"model.init_config.model_type: .*no_such_family"):
        load_model(ModelConfig(init_config={"model_type": "no_such_family"}), vocab_size=50)
    with pytest.raises(ModelLoadError, match=r"model.init_config: model_type 'opt' has no architecture mapping"):
        load_model(ModelConfig(init_config={"model_type": "opt"}), vocab_size=50)
