"""The Llama layout (`llama`, `mistral`, `qwen2`, `qwen3`): nn.Linear weights stored (out, in),
separate q/k/v projections with grouped-query attention, RMSNorm, a SwiGLU MLP and rotary positions.

Qwen2 adds q/k/v biases (they stay dense, like every bias). Qwen3 adds a per-head RMSNorm on q and
k; its q and k nodes are that norm's input, the projections' outputs as on every model of this
layout. The norm's RMS mixes every channel of a head, so a node after it would move when a weight
feeding another channel of its head moved: its edges would not be the whole of what it reads. A SwiGLU
neuron is act(gate) * up, the input of `down_proj`, so a neuron reads each residual channel through
two weights (gate and up): two edges. A value channel reaches the attention write once per query
head of its group (docs/architectures.md).
"""
from __future__ import annotations

from extract.arch.base import EdgeMatrix, Family, Site


def _shape(model):
    """(layers, d_model, query heads, kv heads, head_dim, MLP width), read off the modules."""
    attn = model.model.layers[0].self_attn
    head_dim = attn.head_dim
    return (len(model.model.layers), model.config.hidden_size, attn.q_proj.out_features // head_dim,
            attn.k_proj.out_features // head_dim, head_dim, model.model.layers[0].mlp.down_proj.in_features)


def sites(model) -> list[Site]:
    layers, d, n_q, n_kv, head_dim, d_mlp = _shape(model)
    out = []
    for layer in range(layers):
        block = f"model.layers.{layer}"
        attn = f"{block}.self_attn"
        out += [
            Site(layer, "attn_in", f"{block}.input_layernorm", d),
            Site(layer, "q", f"{attn}.q_proj", n_q * head_dim),  # before Qwen3's q_norm and rotary
            Site(layer, "k", f"{attn}.k_proj", n_kv * head_dim),
            Site(layer, "v", f"{attn}.v_proj", n_kv * head_dim),
            Site(layer, "attn_out", attn, d),
            Site(layer, "mlp_in", f"{block}.post_attention_layernorm", d),
            Site(layer, "mlp", f"{block}.mlp.down_proj", d_mlp, on_input=True),  # act(gate) * up
            Site(layer, "mlp_out", f"{block}.mlp", d),
        ]
    return out


def edge_matrices(model) -> list[EdgeMatrix]:
    layers, _, n_q, n_kv, head_dim, _ = _shape(model)
    group = n_q // n_kv  # query heads per kv head: query head h reads kv head h // group
    # o_proj's input position h * head_dim + c carries value channel (h // group) * head_dim + c
    value_of_position = tuple((p // head_dim // group) * head_dim + p % head_dim for p in range(n_q * head_dim))
    shared = group > 1
    out = []
    for layer in range(layers):
        block, key = f"model.layers.{layer}", f"{layer}."
        read, mlp_read = (key + "attn_in",), (key + "mlp_in",)
        out += [
            EdgeMatrix(f"{block}.self_attn.q_proj.weight", read, (key + "q",), "out_in"),
            EdgeMatrix(f"{block}.self_attn.k_proj.weight", read, (key + "k",), "out_in"),
            EdgeMatrix(f"{block}.self_attn.v_proj.weight", read, (key + "v",), "out_in"),
            EdgeMatrix(f"{block}.self_attn.o_proj.weight", (key + "v",), (key + "attn_out",), "out_in",
                       input_nodes=value_of_position if shared else None, head_dim=head_dim if shared else None),
            EdgeMatrix(f"{block}.mlp.gate_proj.weight", mlp_read, (key + "mlp",), "out_in"),
            EdgeMatrix(f"{block}.mlp.up_proj.weight", mlp_read, (key + "mlp",), "out_in"),
            EdgeMatrix(f"{block}.mlp.down_proj.weight", (key + "mlp",), (key + "mlp_out",), "out_in"),
        ]
    return out


FAMILY = Family("llama", ("llama", "mistral", "qwen2", "qwen3"), sites, edge_matrices, "model.norm")
