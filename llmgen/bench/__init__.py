"""Benchmarks of decoding strategies: `llmgen bench` and `scripts/bench.py` are both built from here.

    prompts.py      the built-in prompt sets (grounded, open, code) and user prompt files
    stats.py        median/min/max, the interleaved schedule, distinct-n, peak memory
    contenders.py   each configuration (llmgen plain, penalties, speculative, beam; HF twins), run once
    adapters.py     the only contact with llmgen.decoding.speculative and llmgen.decoding.beam (optional modules)
    runner.py       the plan, the interleaved runs, the calibration behind predicted speedups
    roofline.py     memory bandwidth and the ceiling it puts on plain decoding
    loadtime.py     load time from the safetensors cache against the first GGUF conversion
    profile.py      torch.profiler over plain decoding: matrix products, other operators, the rest
    report.py       Markdown, Rich and JSON renderings of a result
    plot.py         the optional PNG (matplotlib)
"""
