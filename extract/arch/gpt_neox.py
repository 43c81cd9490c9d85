"""GPT-NeoX (`gpt_neox`, the Pythia models): nn.Linear weights stored (out, in), one fused
`query_key_value` laid out head by head (head 0's q, k, v, then head 1's, ...), partial rotary,
LayerNorm, an untied unembedding, and attention and MLP in parallel off the same residual stream
(`use_parallel_residual`; the sites are the same either way)."""
from __future__ import annotations

from extract.arch.base import EdgeMatrix, Family, Site


def _shape(model):
    """(layers, d_model, heads, head_dim, MLP width)."""
    config = model.config
    head_dim = config.hidden_size // config.num_attention_heads
    return (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, head_dim,
            config.intermediate_size)


def _qkv_positions(part: int, heads: int, head_dim: int) -> tuple[int, ...]:
    """Where q (part 0), k (1) or v (2) channels sit in the fused output, in node order (head, channel)."""
    return tuple(h * 3 * head_dim + part * head_dim + c for h in range(heads) for c in range(head_dim))


def sites(model) -> list[Site]:
    layers, d, heads, head_dim, d_mlp = _shape(model)
    qkv = [(name, _qkv_positions(part, heads, head_dim)) for part, name in enumerate(("q", "k", "v"))]
    out = []
    for layer in range(layers):
        block = f"gpt_neox.layers.{layer}"
        fused = f"{block}.attention.query_key_value"
        out += [
            Site(layer, "attn_in", f"{block}.input_layernorm", d),
            *(Site(layer, name, fused, d, positions=positions) for name, positions in qkv),
            Site(layer, "attn_out", f"{block}.attention", d),
            Site(layer, "mlp_in", f"{block}.post_attention_layernorm", d),
            Site(layer, "mlp", f"{block}.mlp.act", d_mlp),
            Site(layer, "mlp_out", f"{block}.mlp", d),
        ]
    return out


def edge_matrices(model) -> list[EdgeMatrix]:
    layers, d, heads, head_dim, _ = _shape(model)
    # row r of query_key_value is the node at (r's part) * d + (its head, channel) in q | k | v order
    node_of_row = [0] * (3 * d)
    for part in range(3):
        for node, row in enumerate(_qkv_positions(part, heads, head_dim)):
            node_of_row[row] = part * d + node
    out = []
    for layer in range(layers):
        block, key = f"gpt_neox.layers.{layer}", f"{layer}."
        out += [
            EdgeMatrix(f"{block}.attention.query_key_value.weight", (key + "attn_in",),
                       (key + "q", key + "k", key + "v"), "out_in", output_nodes=tuple(node_of_row)),
            EdgeMatrix(f"{block}.attention.dense.weight", (key + "v",), (key + "attn_out",), "out_in"),
            EdgeMatrix(f"{block}.mlp.dense_h_to_4h.weight", (key + "mlp_in",), (key + "mlp",), "out_in"),
            EdgeMatrix(f"{block}.mlp.dense_4h_to_h.weight", (key + "mlp",), (key + "mlp_out",), "out_in"),
        ]
    return out


FAMILY = Family("gpt_neox", ("gpt_neox",), sites, edge_matrices, "gpt_neox.final_layer_norm",
                parallel_residual=lambda config: getattr(config, "use_parallel_residual", True))
