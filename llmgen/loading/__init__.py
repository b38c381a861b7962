"""The loading layer: model references, the registry, the GGUF cache and checks, the int4 packing, and
the engines that run a model."""
