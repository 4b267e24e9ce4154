#!/usr/bin/env bash
# On a CUDA machine, from the repository root: install, the GPU tests (tests/test_gpu.py with the
# CUDA graph step, and tests/test_speed.py with its CUDA sync check; both skip elsewhere), the
# benchmark with --device cuda, then one short DDP training under `torchrun --nproc_per_node=1`
# (nccl, SyncBatchNorm). At most 8 minutes: install <= 0.4, tests <= 2.7 (timeout), benchmark
# <= 3.8 (--max-minutes 3.2 drops extra batch sizes that would not fit; timeout as a backstop),
# torchrun <= 1.
#
#   bash benchmarks/gpu.sh            # writes benchmarks/RESULTS-cuda.md
#
# A machine with a package index: `pip install -e ".[dev]"`. A machine without one (the usual
# GPU machine): put the wheels it lacks into the ignored folder .whl/ first, here, and carry it:
#
#   mkdir -p .whl; cp ../shared/gpu-wheels/*.whl .whl/      # .whl/ is in .gitignore
#   # when pyproject.toml asks for a newer hydra-core (say 1.3.8) than the shared wheel:
#   pip download hydra-core==1.3.8 --no-deps -d .whl
#
# Of several wheels of one package in .whl/, the newest is installed.
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
PY=${PYTHON:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
    # the newest wheel of each package (name-version-...whl, sorted by version)
    wheels=$(ls .whl/*.whl | sort -V | awk -F/ '{split($NF, a, "-"); newest[a[1]] = $0} END {for (k in newest) print newest[k]}')
    echo "installing offline: $(echo $wheels | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --target /tmp/site $wheels || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
else
    "$PY" -m pip install -q -e ".[dev]" || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

echo "== GPU tests =="
timeout 160 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_speed.py::test_no_cuda_synchronisation_per_step tests/test_gpu.py
tests=$?

echo "== benchmark, --device cuda =="
timeout 230 "$PY" benchmarks/bench.py --device cuda --repeats 2 --extra-repeats 1 --startup-repeats 2 \
    --batch-sizes 1024,256,8192 --train-size 60000 --tutorial-size 4000 --wait-quiet 0 \
    --max-minutes 3.2 --out benchmarks/RESULTS-cuda.md
bench=$?

echo "== torchrun --nproc_per_node=1: DDP with nccl on one GPU =="
ddp_dir=$(mktemp -d)
timeout 60 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 --no-python \
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
