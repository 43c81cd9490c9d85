"""GPT-2 (`gpt2`): Conv1D weights stored (in, out), one fused `c_attn` whose output is q | k | v,
a learned position embedding, and LayerNorm before attention and the MLP."""
from __future__ import annotations

from extract.arch.base import EdgeMatrix, Family, Site


def sites(model) -> list[Site]:
    config = model.config
    d, d_mlp = config.n_embd, config.n_inner or 4 * config.n_embd
    out = []
    for layer in range(config.n_layer):
        block = f"transformer.h.{layer}"
        out += [
            Site(layer, "attn_in", f"{block}.ln_1", d),  # the residual read into attention
            Site(layer, "q", f"{block}.attn.c_attn", d, start=0),
            Site(layer, "k", f"{block}.attn.c_attn", d, start=d),
            Site(layer, "v", f"{block}.attn.c_attn", d, start=2 * d),
            Site(layer, "attn_out", f"{block}.attn", d),  # the attention residual write
            Site(layer, "mlp_in", f"{block}.ln_2", d),
            Site(layer, "mlp", f"{block}.mlp.act", d_mlp),  # neurons, after the activation
            Site(layer, "mlp_out", f"{block}.mlp", d),  # the MLP residual write
        ]
    return out


def edge_matrices(model) -> list[EdgeMatrix]:
    out = []
    for layer in range(model.config.n_layer):
        block, key = f"transformer.h.{layer}", f"{layer}."
        out += [
            EdgeMatrix(f"{block}.attn.c_attn.weight", (key + "attn_in",), (key + "q", key + "k", key + "v"), "in_out"),
            EdgeMatrix(f"{block}.attn.c_proj.weight", (key + "v",), (key + "attn_out",), "in_out"),
            EdgeMatrix(f"{block}.mlp.c_fc.weight", (key + "mlp_in",), (key + "mlp",), "in_out"),
            EdgeMatrix(f"{block}.mlp.c_proj.weight", (key + "mlp",), (key + "mlp_out",), "in_out"),
        ]
    return out


FAMILY = Family("gpt2", ("gpt2",), sites, edge_matrices, "transformer.ln_f",
                extra_embeddings=("transformer.wpe.weight",))
