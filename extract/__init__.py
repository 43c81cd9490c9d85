"""Dense-to-sparse circuit extraction: fine-tune a dense causal LM into a weight-sparse one, prune
task circuits out of both, and check them.

The public API is `load_circuit` (extract/circuits/load.py); the command line is extract/run.py.
Importing the package stays light (no torch) until `load_circuit` is first used.
"""

__version__ = "0.1.0"
__all__ = ["load_circuit"]


def __getattr__(name: str):
    if name == "load_circuit":
        from extract.circuits.load import load_circuit

        return load_circuit
    raise AttributeError(f"module 'extract' has no attribute {name!r}")
