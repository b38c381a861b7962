"""The decoding core: settings, the processor chain, the pick, and plain, batched, beam, speculative and
chat decoding over an engine."""
