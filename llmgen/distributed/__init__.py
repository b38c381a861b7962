"""Beyond one machine: `ray.py` shards `generate --input` over Ray actors that each run llmgen's own
batched decoding (`batch.decode_rows`). Ray is the optional extra `llmgen[ray]`."""
