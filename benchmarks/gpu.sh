#!/usr/bin/env bash
# On a CUDA machine, from the repository root: the GPU tests (tests/test_gpu.py, and
# tests/test_speed.py with its CUDA sync check; both skip elsewhere), the benchmark with
# --device cuda, then one short DDP training under `torchrun --nproc_per_node=1` (nccl,
# SyncBatchNorm). At most 8 minutes: install ~0.5, tests <= 3 (timeout), benchmark <= 4.5
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

echo "== torchrun --nproc_per_node=1: DDP with nccl on one GPU =="
ddp_dir=$(mktemp -d)
timeout 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 --no-python \
    "$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/nettrain-train" \
    data=synthetic data.num_samples=2000 epochs=2 early_stopping.enabled=false model.norm=batchnorm model.sync_bn=true \
    console.show_config=false console.show_model=false "hydra.run.dir=$ddp_dir" \
  && "$PY" - "$ddp_dir/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
facts = {k: s[k] for k in ("status", "world_size", "backend", "device", "device_name", "test_acc", "samples_per_s")}
print(facts)
with open("benchmarks/RESULTS-cuda.md", "a") as f:  # recorded beside the benchmark
    f.write(f"\ntorchrun --nproc_per_node=1 (DDP, nccl, SyncBatchNorm), 2 epochs of 1600 synthetic samples: {facts}\n")
assert (s["status"], s["world_size"], s["backend"]) == ("completed", 1, "nccl") and s["device"] == "cuda:0", s
PYEOF
ddp=$?
rm -rf "$ddp_dir"

echo "gpu.sh done in $((SECONDS - start)) s: tests exit $tests, benchmark exit $bench, torchrun/nccl exit $ddp"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$ddp" -eq 0 ]
