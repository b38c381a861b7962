#!/usr/bin/env bash
# The GPU check run on a lent device machine (not part of CI, which has no GPU): the tiny-model
# oracle tests with --device auto picking cuda (bfloat16). The embedded model is not there (no wheel).
set -u
python3 -c "import torch, transformers, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, sys.version)"
python3 -m pip install --no-deps --no-build-isolation -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD
python3 -m pytest -q -p no:cacheprovider tests/test_processors.py tests/test_decode.py tests/test_sampling.py \
  tests/test_speculative.py -k "not wide and not embedded and not small" 2>&1 | tail -25
