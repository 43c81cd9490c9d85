"""Dense-to-sparse circuit extraction: fine-tune a dense causal LM into a weight-sparse one."""

__version__ = "0.1.0"
