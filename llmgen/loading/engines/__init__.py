"""Engines: what runs a model and keeps its KV cache (`base.py` is the interface; `torch.py`, `llamacpp.py`)."""
