"""What each node of a circuit does, read off the model with the same code for dense and sparse circuits.

For every kept node:
- `corpus` and `task`: the held-out text and the task prompts where the node is farthest from its mean
  (the value it is held at when removed), each with the token highlighted and a few tokens either side;
- `sides`: its value at the last token on each side of the task's pairs (which of its two answers, in
  text order, is correct), and how far apart the two sides are in pooled standard deviations;
- `logits` (residual writes and MLP neurons): the tokens its write pushes up and down most through the
  final norm's gain (and LayerNorm's centering) and the unembedding: the direct path, to first order;
- `attention` (q and k channels): where the node's head looks from the last token, with only the
  circuit kept;
- `effect`: how much the task loss would rise with the node alone removed from the circuit (first order);
- `summary`: one line a person reads first, made from the above.

A circuit of more than MAX_DESCRIBED nodes (a dense model's, a real checkpoint's) has only its
MAX_DESCRIBED nodes of largest |effect| described in full; the rest carry their effect alone. Reading
54,498 nodes of SmolLM2-135M in full ran past 12 minutes, and no one reads that many.

The full model is read for the contexts and the sides, the circuit alone (every other node at its mean)
for attention and the effect. Descriptions go into the circuit file, so a published circuit carries them.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import torch

from extract.arch import family_of
from extract.circuits.edges import in_out_weight
from extract.circuits.masks import NodeMask
from extract.circuits.sites import Site, hooked
from extract.tasks.examples import TaskExample, padded_prompts, two_way_loss

CONTEXTS = 4  # top contexts per node, from the corpus and from the task prompts
BEFORE, AFTER = 8, 3  # tokens shown either side of the highlighted one
TOP_TOKENS = 5  # tokens pushed up and down
MAX_PROMPTS = 128  # task prompts read (the test split, which every reported figure was read on)
BATCH = 16
MAX_DESCRIBED = 1000  # nodes described in full per circuit, by |effect|
WRITES = ("attn_out", "mlp_out")


def node_id(key: str, index: int) -> str:
    """How a node is named in descriptions and the HTML report: `1.attn_out:40`."""
    return f"{key}:{index}"


@torch.no_grad()
def describe_circuit(model, tokenizer, sites: list[Site], mask: NodeMask, gates: dict[str, torch.Tensor],
                     blocks: torch.Tensor, examples: list[TaskExample]) -> dict[str, dict]:
    """{node id: description} for every node `gates` keeps. `mask` holds every node's ablation mean;
    `blocks` is held-out corpus text, `examples` the task's test split."""
    kept = {s.key: torch.nonzero(gates[s.key]).flatten() for s in sites if gates[s.key].any()}
    chosen = [s for s in sites if s.key in kept]
    examples = examples[:MAX_PROMPTS]
    effects = _effects(model, chosen, kept, mask, gates, examples)
    described = {node_id(s.key, int(i)): {"site": s.key, "index": int(i)} for s in chosen for i in kept[s.key]}
    for node, effect in effects.items():
        described[node]["effect"] = effect
    if len(described) > MAX_DESCRIBED:
        kept = _largest_effects(chosen, kept, effects, MAX_DESCRIBED)
        chosen = [s for s in chosen if s.key in kept]
    fully = {node_id(s.key, int(i)) for s in chosen for i in kept[s.key]}
    means = {s.key: mask.mean_of(s).cpu()[kept[s.key]] for s in chosen}

    corpus = [row.tolist() for row in blocks]
    prompts = [list(e.prompt_ids) for e in examples]
    last_values = None
    for source, texts in (("corpus", corpus), ("task", prompts)):
        contexts, last_values = _scan_texts(model, chosen, kept, means, texts, tokenizer)
        for node, found in contexts.items():
            described[node][source] = found
    for node, sides in _sides(kept, last_values, examples, tokenizer).items():  # the prompts' last tokens
        described[node]["sides"] = sides
    for node, pushed in _logit_effects(model, chosen, kept, tokenizer).items():
        described[node]["logits"] = pushed
    q_widths = {s.layer: s.width for s in sites if s.name == "q"}
    for node, looks in _attention(model, chosen, kept, q_widths, mask, gates, examples, tokenizer).items():
        described[node]["attention"] = looks
    for node, description in described.items():
        description["summary"] = summary(description) if node in fully else (
            f"not described in full: the circuit has {len(described):,} nodes, and the {MAX_DESCRIBED:,} of "
            "largest effect are")
    return described


def _largest_effects(chosen, kept, effects: dict[str, float], count: int) -> dict[str, torch.Tensor]:
    """`kept` cut to the `count` nodes of largest |effect| (sites with none left are dropped)."""
    nodes = sorted(effects, key=lambda node: -abs(effects[node] or 0.0))[:count]
    picked = defaultdict(list)
    for node in nodes:
        key, index = node.rsplit(":", 1)
        picked[key].append(int(index))
    return {s.key: torch.tensor(sorted(picked[s.key]), dtype=kept[s.key].dtype) for s in chosen if picked[s.key]}


def _effects(model, chosen, kept, mask: NodeMask, gates, examples: list[TaskExample]) -> dict[str, float]:
    """How much the task loss would rise if this node alone were held at its mean with the rest of the
    circuit kept, to first order: sum over positions of (mean - value) * d loss / d value, from one
    backward pass with the circuit alone running (the report orders nodes by it). Removing each node in
    turn would cost a forward pass per node, minutes on a circuit of a few hundred nodes."""
    if not examples:
        return {}
    watched: list[tuple[Site, torch.Tensor, torch.Tensor]] = []  # this batch's (site, value, leaf)

    def watch(site, x):  # after the mask's own hook: x is the node's value with the circuit alone running
        leaf = torch.zeros_like(x, requires_grad=True)
        watched.append((site, x.detach(), leaf))
        return x + leaf

    # summed batch by batch: keeping every batch's values and gradients to the end needed 24 GiB for a
    # 54,796-node circuit of SmolLM2-135M
    totals: dict[str, torch.Tensor] = {}
    with mask.with_gates(model, gates), hooked(model, chosen, watch), torch.enable_grad():
        for start in range(0, len(examples), BATCH):
            batch = examples[start:start + BATCH]
            watched.clear()
            (two_way_loss(model, batch)[0].sum() / len(examples)).backward()
            for site, value, leaf in watched:
                change = (mask.mean_of(site).float() - value.float()) * leaf.grad.float()
                totals[site.key] = totals.get(site.key, 0.0) + change.reshape(-1, site.width).sum(0)
    watched.clear()
    return {node_id(site.key, index): round(float(totals[site.key][index]), 5)
            for site in chosen for index in kept[site.key].tolist()}


def _run_recording(model, chosen: list[Site], kept: dict[str, torch.Tensor], batch: list[list[int]]):
    """({site key: (batch, length, kept nodes) values}, valid (batch, length)) for one left-padded batch."""
    ids, attention, positions = padded_prompts(batch)
    device = next(model.parameters()).device
    seen: dict[str, torch.Tensor] = {}

    def record(site, x):
        seen[site.key] = x[..., kept[site.key].to(x.device)].float().cpu()
        return x

    with hooked(model, chosen, record):
        model(input_ids=ids.to(device), attention_mask=attention.to(device), position_ids=positions.to(device))
    return seen, attention.bool()


def _context(tokenizer, ids: list[int], position: int, value: float) -> dict:
    return {"before": tokenizer.decode(ids[max(0, position - BEFORE):position]),
            "token": tokenizer.decode([ids[position]]),
            "after": tokenizer.decode(ids[position + 1:position + 1 + AFTER]), "value": round(value, 4)}


def _scan_texts(model, chosen, kept, means, texts: list[list[int]], tokenizer
                ) -> tuple[dict[str, list[dict]], dict[str, torch.Tensor]]:
    """One pass of the full model over `texts`: per node, the CONTEXTS positions where it is farthest
    from its mean, and each text's last-token values ({site key: (texts, kept nodes)}). Streamed over
    batches, so a long corpus or a dense circuit never holds every activation at once."""
    longest = max(len(t) for t in texts)
    best: dict[str, tuple[torch.Tensor, ...]] = {}  # site key: (distance, text * longest + position, value)
    last = defaultdict(list)
    for start in range(0, len(texts), BATCH):
        batch = texts[start:start + BATCH]
        seen, valid = _run_recording(model, chosen, kept, batch)
        width = valid.shape[1]
        pad = torch.tensor([width - len(t) for t in batch])[:, None]
        code = ((torch.arange(len(batch)) + start)[:, None] * longest + torch.arange(width)[None, :] - pad).flatten()
        for key, values in seen.items():
            last[key].append(values[:, -1])  # left-padded: the last column is every text's last token
            candidates = ((values - means[key]).abs().masked_fill(~valid[..., None], -1.0).flatten(0, 1),
                          code[:, None].expand(-1, values.shape[-1]), values.flatten(0, 1))
            if key in best:
                candidates = tuple(torch.cat(pair) for pair in zip(best[key], candidates))
            # twice as many as shown: a task's pairs repeat each prompt, and repeats are shown once
            top = candidates[0].topk(min(2 * CONTEXTS, candidates[0].shape[0]), dim=0).indices
            best[key] = tuple(t.gather(0, top) for t in candidates)
    out = {}
    for key, (distance, where, values) in best.items():
        for column, index in enumerate(kept[key].tolist()):
            contexts = []
            for d, w, v in zip(distance[:, column], where[:, column], values[:, column]):
                if d < 0:  # padding: fewer real positions than asked for
                    continue
                context = _context(tokenizer, texts[int(w) // longest], int(w) % longest, float(v))
                if context not in contexts and len(contexts) < CONTEXTS:
                    contexts.append(context)
            out[node_id(key, index)] = contexts
    return out, {key: torch.cat(values) for key, values in last.items()}


def _sides(kept, last_values: dict[str, torch.Tensor], examples: list[TaskExample], tokenizer) -> dict[str, dict]:
    """The node's mean and spread at the last token on each side of the task's pairs, and how far apart
    the sides are (difference of means over the pooled standard deviation). An example's side is whether
    its correct answer is the first or the second of its two answers in text order, so the quote task's
    sides are double quotes (`"`, `")`, `"]` ...) and single quotes, whatever token follows the quote."""
    names = [(tokenizer.decode([e.target_id]), tokenizer.decode([e.alternative_id])) for e in examples]
    first = torch.tensor([target < alternative for target, alternative in names])
    answers = [[t for (t, _), f in zip(names, first.tolist()) if f == side] for side in (True, False)]
    out = {}
    for key, values in last_values.items():
        for column, index in enumerate(kept[key].tolist()):
            sides = []
            for side, rows in zip(answers, (first, ~first)):
                part = values[rows, column].double()
                if len(part):
                    sides.append({"answers": [a for a, _ in Counter(side).most_common(4)],
                                  "mean": round(float(part.mean()), 4),
                                  "std": round(float(part.std()) if len(part) > 1 else 0.0, 4), "n": len(part)})
            separation = None
            if len(sides) == 2:
                pooled = ((sides[0]["std"] ** 2 + sides[1]["std"] ** 2) / 2) ** 0.5
                separation = round((sides[0]["mean"] - sides[1]["mean"]) / pooled, 3) if pooled > 0 else None
            out[node_id(key, index)] = {"sides": sides, "separation": separation}
    return out


def _through_final_norm(model, writes: torch.Tensor) -> torch.Tensor:
    """Residual-stream directions (n, d_model) as the unembedding sees them, to first order: centred
    where the final norm is a LayerNorm, then times its per-channel gain. A channel's gain can be
    negative, which swaps the tokens it pushes up and down."""
    norm = model.get_submodule(family_of(model).final_norm)
    if isinstance(norm, torch.nn.LayerNorm):
        writes = writes - writes.mean(-1, keepdim=True)
    return writes * norm.weight.detach().float().to(writes.device)


def _logit_effects(model, chosen, kept, tokenizer) -> dict[str, dict]:
    """For residual writes (one residual channel) and MLP neurons (their output projection's row), the
    tokens whose logits the node's write raises and lowers most through the final norm and the unembedding."""
    unembed = model.get_output_embeddings().weight.detach().float()  # (vocab, d_model)
    params = dict(model.named_parameters())
    writers = {m.inputs[0]: m for m in family_of(model).edge_matrices(model)
               if len(m.inputs) == 1 and m.inputs[0].endswith(".mlp")}
    identity = torch.eye(unembed.shape[1], device=unembed.device)
    out = {}
    for site in chosen:
        if site.name in WRITES:  # one residual channel each
            writes = identity[kept[site.key].to(unembed.device)]
        elif site.name == "mlp" and site.key in writers:  # the output projection's row of each neuron
            writes = in_out_weight(writers[site.key], params).float()[kept[site.key].to(unembed.device)]
        else:
            continue
        directions = _through_final_norm(model, writes) @ unembed.t()  # (kept, vocab)
        for index, effect in zip(kept[site.key].tolist(), directions.cpu()):
            up, down = effect.topk(TOP_TOKENS), (-effect).topk(TOP_TOKENS)
            out[node_id(site.key, index)] = {
                "up": [[tokenizer.decode([int(t)]), round(float(v), 4)] for v, t in zip(up.values, up.indices)],
                "down": [[tokenizer.decode([int(t)]), round(-float(v), 4)] for v, t in zip(down.values, down.indices)]}
    return out


def _query_heads(heads: int, q_width: int, site: Site, index: int) -> list[int]:
    """The query heads whose scores a q or k channel enters (a k channel serves its kv head's group)."""
    head_dim = q_width // heads
    if site.name == "q":
        return [index // head_dim]
    group = heads // (site.width // head_dim)
    return list(range(index // head_dim * group, (index // head_dim + 1) * group))


def _attention(model, chosen, kept, q_widths: dict[int, int], mask: NodeMask, gates, examples: list[TaskExample],
               tokenizer) -> dict[str, dict]:
    """For q and k channels: with only the circuit kept, which token the node's head looks at most from
    each prompt's last token; the tokens most often looked at, with the share of prompts and the mean
    attention weight they get."""
    qk = [s for s in chosen if s.name in ("q", "k")]
    if not qk or not examples:
        return {}
    prompts = [list(e.prompt_ids) for e in examples]
    device = next(model.parameters()).device
    layers = sorted({s.layer for s in qk})
    from_last: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}  # per prompt: (heads, its length)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")  # the fused kernels return no attention weights
    try:
        with mask.with_gates(model, gates):
            for start in range(0, len(prompts), BATCH):
                batch = prompts[start:start + BATCH]
                ids, attention, positions = padded_prompts(batch)
                output = model(input_ids=ids.to(device), attention_mask=attention.to(device),
                               position_ids=positions.to(device), output_attentions=True)
                for layer in layers:
                    weights = output.attentions[layer][:, :, -1].float().cpu()  # (batch, heads, width)
                    from_last[layer] += [w[:, w.shape[-1] - len(p):] for w, p in zip(weights, batch)]
    finally:
        model.set_attn_implementation(previous)
    out = {}
    for site in qk:
        for index in kept[site.key].tolist():
            heads = _query_heads(model.config.num_attention_heads, q_widths[site.layer], site, index)
            looked: dict[str, list[tuple[float, int]]] = defaultdict(list)  # token: [(weight, distance)]
            for prompt, weights in zip(prompts, from_last[site.layer]):
                weights = weights[heads].mean(0)
                position = int(weights.argmax())
                looked[tokenizer.decode([prompt[position]])].append((float(weights[position]),
                                                                     len(prompt) - 1 - position))
            top = sorted(looked.items(), key=lambda item: -len(item[1]))[:3]
            out[node_id(site.key, index)] = {"heads": heads, "looks_at": [
                {"token": token, "share": round(len(seen) / len(prompts), 3),
                 "weight": round(sum(w for w, _ in seen) / len(seen), 3),
                 "distance": sorted(d for _, d in seen)[len(seen) // 2]} for token, seen in top]}
    return out


def summary(description: dict) -> str:
    """One readable line: what the node separates, what it pushes, where it looks, where it fires."""
    parts = []
    sides = description.get("sides") or {}
    if sides.get("separation") is not None and abs(sides["separation"]) >= 1:
        a, b = sides["sides"]
        parts.append(f"at the last token, {a['mean']:+.2f} where the answer is {_answers(a)} and {b['mean']:+.2f} "
                     f"where it is {_answers(b)} ({abs(sides['separation']):.1f} sd apart)")
    logits = description.get("logits")
    if logits:
        parts.append(f"pushes up {', '.join(repr(t) for t, _ in logits['up'][:3])}; "
                     f"down {', '.join(repr(t) for t, _ in logits['down'][:3])}")
    attention = description.get("attention")
    if attention and attention["looks_at"]:
        looks = ", ".join(f"{seen['token']!r} {seen['distance']} back ({seen['share']:.0%})"
                          for seen in attention["looks_at"])
        parts.append(f"head {'/'.join(map(str, attention['heads']))} looks from the last token at {looks} of prompts")
    for source, where in (("task", "in the task's prompts"), ("corpus", "in held-out text")):
        contexts = description.get(source)
        if contexts:
            parts.append(f"{where}, strongest at " + ", ".join(repr(c["token"]) for c in contexts[:3]))
    return "; ".join(parts)


def _answers(side: dict) -> str:
    return "/".join(repr(a) for a in side["answers"][:2])
