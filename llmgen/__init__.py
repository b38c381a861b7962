"""llmgen: a decoding workbench for local causal language models."""

__version__ = "0.1.0"
