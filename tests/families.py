"""Tiny random models of every supported family, built from transformers' config classes.

Odd widths (an MLP of 37, heads of 6) make axis mix-ups fail instead of passing by symmetry. FAMILIES
are one variant per `model_type`: grouped-query attention (4 query heads over 2 kv heads), tied and
untied embeddings, Qwen2's q/k/v biases, Qwen3's q/k norms, and GPT-NeoX's fused per-head q/k/v,
partial rotary and parallel residual. VARIANTS add the configurations real checkpoints use that
change where a node sits or which weight reads it: every Llama bias (o_proj's and the MLP's too),
one query head per kv head, a `head_dim` other than hidden / heads (Qwen3, Mistral-Nemo), and
GPT-NeoX with a sequential residual. The mapping checks run on every variant; the end-to-end runs,
which cost more, on FAMILIES.
"""
from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

D_MODEL, HEADS, KV_HEADS, HEAD_DIM, D_MLP, LAYERS = 24, 4, 2, 6, 37, 2

_LLAMA_LIKE = dict(hidden_size=D_MODEL, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                   intermediate_size=D_MLP, num_hidden_layers=LAYERS)
_GPT_NEOX = dict(hidden_size=D_MODEL, num_attention_heads=HEADS, intermediate_size=D_MLP, num_hidden_layers=LAYERS,
                 rotary_pct=2 / 3, tie_word_embeddings=False, hidden_dropout=0.0, attention_dropout=0.0)
CONFIGS: dict[str, tuple[str, dict]] = {  # variant -> (model_type, config kwargs)
    "gpt2": ("gpt2", dict(n_embd=D_MODEL, n_head=HEADS, n_inner=D_MLP, n_layer=LAYERS, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0)),
    "llama": ("llama", dict(_LLAMA_LIKE, tie_word_embeddings=False)),
    "mistral": ("mistral", dict(_LLAMA_LIKE, tie_word_embeddings=False)),
    "qwen2": ("qwen2", dict(_LLAMA_LIKE, tie_word_embeddings=True)),  # with q/k/v biases
    "qwen3": ("qwen3", dict(_LLAMA_LIKE, head_dim=HEAD_DIM, tie_word_embeddings=False)),  # with q/k norms
    # 4 of each head's 6 channels rotated (rotary_ndims 4: an even count, as RoPE needs)
    "gpt_neox": ("gpt_neox", _GPT_NEOX),
}
FAMILIES = list(CONFIGS)
CONFIGS.update({
    "llama-biases": ("llama", dict(_LLAMA_LIKE, attention_bias=True, mlp_bias=True)),  # q/k/v/o, gate/up/down
    "llama-mha": ("llama", dict(_LLAMA_LIKE, num_key_value_heads=HEADS)),  # one query head per kv head
    "qwen3-head_dim8": ("qwen3", dict(_LLAMA_LIKE, head_dim=8)),  # heads of 8 on a width of 24, as real Qwen3s
    "mistral-head_dim8": ("mistral", dict(_LLAMA_LIKE, head_dim=8)),  # as Mistral-Nemo
    "gpt_neox-sequential": ("gpt_neox", dict(_GPT_NEOX, use_parallel_residual=False)),
})
VARIANTS = list(CONFIGS)


def tiny_config(variant: str, vocab_size: int = 101, context: int = 64, **overrides):
    model_type, kwargs = CONFIGS[variant]
    context_key = "n_positions" if model_type == "gpt2" else "max_position_embeddings"
    return AutoConfig.for_model(model_type, **{"vocab_size": vocab_size, context_key: context, "bos_token_id": 0,
                                               "eos_token_id": 0, "pad_token_id": 0, **kwargs, **overrides})


def tiny_model(variant: str, seed: int = 0, **overrides):
    """A randomly initialised model of `variant`, in eval mode, with nonzero biases where it has any
    (a zero-initialised bias would hide a site that drops it)."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(variant, **overrides)).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0, 0.1)
    return model


def attention_shape(variant: str) -> tuple[int, int, int]:
    """(query heads, kv heads, head_dim), read from the variant's config as transformers reads it."""
    config = tiny_config(variant)
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or D_MODEL // heads
    return heads, kv, head_dim


def nodes_per_layer(variant: str) -> int:
    """METHOD.md's count with grouped-query attention: 4 residual sites, q, k, v and the MLP."""
    heads, kv, head_dim = attention_shape(variant)
    return 4 * D_MODEL + heads * head_dim + 2 * kv * head_dim + D_MLP
