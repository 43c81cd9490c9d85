"""Does the suite notice a wrong mapping or a method bug? Put each realistic bug in, one at a time, in a
throwaway copy of this checkout, run the test files a developer would expect to cover it, and list the
tests that fail. A mutant that no test fails is a gap in the suite.

    python scripts/check_mutants.py                  # every mutant (18 minutes on 2 cores)
    python scripts/check_mutants.py --only kl_direction prune_lock

docs/testing.md has the last run's table. The checkout itself is never edited.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPING_TESTS = ("tests/test_site_mapping.py", "tests/test_families.py", "-m", "not slow")


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    edits: tuple[tuple[str, str, str], ...]  # (file, text, replacement): each text must occur once
    tests: tuple[str, ...]  # pytest arguments


LLAMA, GPT2, NEOX = "extract/arch/llama.py", "extract/arch/gpt2.py", "extract/arch/gpt_neox.py"
LLAMA_LOOP = '    out = []\n    for layer in range(layers):\n        block = f"model.layers.{layer}"\n'


def _swap_reads(file: str, attn_in: str, mlp_in: str) -> tuple[tuple[str, str, str], ...]:
    """attn_in hooks `mlp_in`'s module and mlp_in `attn_in`'s."""
    return ((file, f'"attn_in", f"{{block}}.{attn_in}"', f'"attn_in", f"{{block}}.{mlp_in}"'),
            (file, f'"mlp_in", f"{{block}}.{mlp_in}"', f'"mlp_in", f"{{block}}.{attn_in}"'))


MUTANTS = (
    Mutant("llama_k_v_hooks_swapped", "Llama layout: the k site hooks v_proj and the v site k_proj",
           ((LLAMA, 'Site(layer, "k", f"{attn}.k_proj", n_kv * head_dim),\n'
                    '            Site(layer, "v", f"{attn}.v_proj",',
             'Site(layer, "k", f"{attn}.v_proj", n_kv * head_dim),\n'
             '            Site(layer, "v", f"{attn}.k_proj",'),),
           MAPPING_TESTS),
    Mutant("gpt2_k_v_slices_swapped", "GPT-2: the k site reads c_attn's v slice and the v site its k slice",
           ((GPT2, 'd, start=d),\n            Site(layer, "v", f"{block}.attn.c_attn", d, start=2 * d)',
             'd, start=2 * d),\n            Site(layer, "v", f"{block}.attn.c_attn", d, start=d)'),),
           MAPPING_TESTS),
    Mutant("gpt_neox_k_v_positions_swapped", "GPT-NeoX: the k and v sites take each other's rows of the fused output",
           ((NEOX, 'enumerate(("q", "k", "v"))', 'enumerate(("q", "v", "k"))'),),
           MAPPING_TESTS),
    Mutant("gpt2_attn_in_mlp_in_swapped", "GPT-2: attn_in hooks ln_2 and mlp_in ln_1",
           _swap_reads(GPT2, "ln_1", "ln_2"), MAPPING_TESTS),
    Mutant("llama_attn_in_mlp_in_swapped", "Llama layout: attn_in and mlp_in hooks swapped",
           _swap_reads(LLAMA, "input_layernorm", "post_attention_layernorm"), MAPPING_TESTS),
    Mutant("gpt_neox_attn_in_mlp_in_swapped", "GPT-NeoX: attn_in and mlp_in hooks swapped",
           _swap_reads(NEOX, "input_layernorm", "post_attention_layernorm"), MAPPING_TESTS),
    Mutant("qwen3_q_k_after_norms", "Qwen3: q and k nodes after q_norm/k_norm (the mapping before issue 28)",
           ((LLAMA, LLAMA_LOOP, '    qk_norm = hasattr(model.model.layers[0].self_attn, "q_norm")\n' + LLAMA_LOOP),
            (LLAMA, 'Site(layer, "q", f"{attn}.q_proj", n_q * head_dim),',
             'Site(layer, "q", f"{attn}.q_norm" if qk_norm else f"{attn}.q_proj", n_q * head_dim,\n'
             '                 flatten=1 + qk_norm),'),
            (LLAMA, 'Site(layer, "k", f"{attn}.k_proj", n_kv * head_dim),',
             'Site(layer, "k", f"{attn}.k_norm" if qk_norm else f"{attn}.k_proj", n_kv * head_dim,\n'
             '                 flatten=1 + qk_norm),'),
            # the Site field and the hook's flattening that the old mapping used
            ("extract/arch/base.py", "    on_input: bool = False", "    flatten: int = 1\n    on_input: bool = False"),
            ("extract/circuits/sites.py", "    def rewrite(x: torch.Tensor) -> torch.Tensor:\n",
             "    def rewrite(x: torch.Tensor) -> torch.Tensor:\n        shape = x.shape\n"
             "        x = x.flatten(-sites[0].flatten)\n"),
            ("extract/circuits/sites.py", "edit(site, x.index_select(-1, where)))\n        return x\n",
             "edit(site, x.index_select(-1, where)))\n        return x.reshape(shape)\n")),
           MAPPING_TESTS),
    Mutant("gqa_value_heads_interleaved",
           "grouped-query attention: query head h reads kv head h % n_kv instead of h // group",
           ((LLAMA, "(p // head_dim // group) * head_dim", "(p // head_dim % n_kv) * head_dim"),),
           MAPPING_TESTS),
    Mutant("gpt_neox_fused_rows_as_blocks", "GPT-NeoX: the fused q/k/v rows read as q | k | v blocks, not head by head",
           ((NEOX, "output_nodes=tuple(node_of_row)", "output_nodes=None"),),
           MAPPING_TESTS),
    Mutant("kl_direction", "the distillation loss computed as KL(student || teacher)",
           (("extract/losses.py", "total += (teacher_logp.exp() * (teacher_logp - student_logp[b, start:end])).sum()",
             "total += (student_logp[b, start:end].exp() * (student_logp[b, start:end] - teacher_logp)).sum()"),),
           ("tests/test_train.py",)),
    Mutant("prune_lock", "the output folder's lock not taken for --stage prune",
           (("extract/run.py", "with output_lock(out) if accelerator.is_main_process else",
             "with output_lock(out) if accelerator.is_main_process and args.stage != \"prune\" else"),),
           ("tests/test_reliability.py",)),
    Mutant("split_train_side_hashes_text", "the train side of the corpus split hashes the text, not the key column",
           (("extract/data.py", '"train": train.filter(lambda row: not heldout(row))',
             '"train": train.filter(lambda row: not is_heldout(str(row[spec.text_column]), spec.heldout_fraction))'),),
           ("tests/test_train.py",)),
    Mutant("describe_without_final_norm", "node descriptions rank pushed tokens without the final norm",
           (("extract/circuits/describe.py", "    return writes * norm.weight.detach().float().to(writes.device)",
             "    return writes"),
            ("extract/circuits/describe.py", "        writes = writes - writes.mean(-1, keepdim=True)\n",
             "        pass\n")),
           ("tests/test_reading.py",)),
)


def _copy_checkout(target: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def _apply(root: Path, mutant: Mutant) -> None:
    for file, text, replacement in mutant.edits:
        path = root / file
        source = path.read_text()
        if source.count(text) != 1:
            raise SystemExit(f"{mutant.name}: {file} holds {source.count(text)} copies of {text!r}; "
                             "update the mutant to the code")
        path.write_text(source.replace(text, replacement))


def run_mutant(mutant: Mutant) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        root = Path(tmp)
        _copy_checkout(root)
        _apply(root, mutant)
        start = time.monotonic()
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-o", "addopts="]
        proc = subprocess.run([*command, *mutant.tests], cwd=root, capture_output=True, text=True)
        failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)))
        return {"name": mutant.name, "what": mutant.what, "tests": " ".join(mutant.tests), "failed": failed,
                "exit": proc.returncode, "seconds": round(time.monotonic() - start),
                "last_line": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-300:]}


def _short(test: str) -> str:
    """tests/test_x.py::test_name[variant] -> test_x::test_name; variants are counted, not listed."""
    file, _, name = test.partition("::")
    return f"{Path(file).stem}::{name.split('[')[0]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", help="mutant names to run (default: all)",
                        choices=[m.name for m in MUTANTS], metavar="NAME")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    survivors = 0
    print("| mutant | tests run | failing tests (variants) |\n| --- | --- | --- |")
    for mutant in chosen:
        result = run_mutant(mutant)
        counts: dict[str, int] = {}
        for test in result["failed"]:
            counts[_short(test)] = counts.get(_short(test), 0) + 1
        caught = ", ".join(f"`{t}` ({n})" for t, n in sorted(counts.items())) or f"**none** ({result['last_line']})"
        survivors += not counts
        what = mutant.what.replace("|", "\\|")  # a table cell
        print(f"| {what} | `{result['tests']}` | {caught} |", flush=True)
    print(f"\n{len(chosen) - survivors} of {len(chosen)} mutants caught")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
