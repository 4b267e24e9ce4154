#!/usr/bin/env bash
# On a CUDA machine, from the repository root: the GPU tests (tests/test_gpu.py, and
# tests/test_speed.py with its CUDA sync check; both skip elsewhere), then the benchmark with
# --device cuda. At most 8 minutes: install ~0.5, tests <= 3 (timeout), benchmark <= 4.5
# (--max-minutes 3.5 drops extra batch sizes that would not fit; timeout as a backstop).
#
#   bash benchmarks/gpu.sh            # writes benchmarks/RESULTS-cuda.md
#
# Installs nothing but this package and its dev extra (pip install -e ".[dev]").
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY=${PYTHON:-python}

"$PY" -m pip install -q -e ".[dev]" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

echo "== GPU tests =="
timeout 180 "$PY" -m pytest -q -rs tests/test_gpu.py tests/test_speed.py
tests=$?

echo "== benchmark, --device cuda =="
timeout 270 "$PY" benchmarks/bench.py --device cuda --repeats 3 --extra-repeats 2 --startup-repeats 3 \
    --max-minutes 3.5 --out benchmarks/RESULTS-cuda.md
bench=$?

echo "gpu.sh done in $((SECONDS - start)) s: tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
