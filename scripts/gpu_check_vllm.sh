#!/usr/bin/env bash
# The --backend vllm checks that need a GPU and vLLM (not CI: vLLM is CUDA-only on PyPI and pins its own
# torch). On a CUDA machine, in a venv with vLLM and llmgen installed (pip install -e . vllm scipy), run:
#
#     bash scripts/gpu_check_vllm.sh            # exits non-zero on the first check that fails
#
# 1. greedy: llmgen's own decoding (--backend hf) and vLLM give the same token ids on the embedded model;
# 2. n-gram speculation in vLLM, on and off: the same greedy output, and metrics that add up;
# 3. first tokens at temperature 1, top-p 0.9: vLLM's histogram over 4,000 samples against llmgen's own
#    probabilities for that stage (`llmgen inspect --json`), by a chi-square test.
set -euo pipefail
PROMPT=${PROMPT:-"Explain why the sky is blue in two sentences."}
COMMON=(--device cuda --dtype float32 --greedy -N 64 --json -q)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "1. greedy, hf against vllm"
llmgen generate --backend hf "${COMMON[@]}" "$PROMPT" > "$out/hf.json"
llmgen generate --backend vllm "${COMMON[@]}" "$PROMPT" > "$out/vllm.json"
python - "$out/hf.json" "$out/vllm.json" <<'PY'
import json, sys
hf, vllm = (json.loads(open(p).read()) for p in sys.argv[1:3])
assert hf["token_ids"] == vllm["token_ids"], (hf["token_ids"], vllm["token_ids"])
print(f"   identical: {len(hf['token_ids'])} tokens")
PY

echo "2. vLLM n-gram speculation on and off"
llmgen speculate --backend vllm --draft ngram --gamma 4 "${COMMON[@]}" "$PROMPT" > "$out/spec.json"
python - "$out/vllm.json" "$out/spec.json" <<'PY'
import json, sys
plain, spec = (json.loads(open(p).read()) for p in sys.argv[1:3])
assert plain["token_ids"] == spec["token_ids"], "speculation changed vLLM's greedy output"
s = spec["stats"]
assert 0 <= s["accepted_tokens"] <= s["draft_tokens"], s
assert sum(s["acceptance_histogram"]) == s["target_forwards"], s
print(f"   identical; {s['accepted_tokens']}/{s['draft_tokens']} draft tokens accepted in {s['target_forwards']} rounds")
PY

echo "3. first-token histogram at T=1, top-p 0.9"
llmgen inspect --device cuda --dtype float32 --temperature 1 --top-p 0.9 --top 500 --json "$PROMPT" > "$out/inspect.json"
llmgen generate --backend vllm --device cuda --dtype float32 --temperature 1 --top-p 0.9 -N 1 -n 4000 --seed 7 \
  --json -q "$PROMPT" > "$out/samples.jsonl"
python - "$out/inspect.json" "$out/samples.jsonl" <<'PY'
import collections, json, sys
from scipy import stats
step = json.loads(open(sys.argv[1]).readline())
final = next(s for s in step["stages"] if s["name"] == "top_p")
probs = {t["id"]: t["prob"] for t in final["top"] if t["prob"] > 0}
counts = collections.Counter(json.loads(line)["token_ids"][0] for line in open(sys.argv[2]))
total = sum(counts.values())
assert set(counts) <= set(probs) | {None}, f"tokens outside the nucleus: {set(counts) - set(probs)}"
cells = [t for t in probs if probs[t] * total >= 5]
observed = [counts[t] for t in cells] + [total - sum(counts[t] for t in cells)]
expected = [probs[t] * total for t in cells] + [total - sum(probs[t] * total for t in cells)]
p = stats.chisquare(observed, expected).pvalue
print(f"   {total} samples over {len(cells)} cells: chi-square p = {p:.3g}")
assert p > 1e-3, p
PY
echo "all vLLM checks passed"
