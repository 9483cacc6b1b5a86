#!/usr/bin/env bash
# The CUDA checks of the fused celo step, in one command (a few minutes on one GPU):
#
#     bash experiments/benchmarks/gpu_check.sh [OUT_DIR]
#
# 1. tests/test_fused.py -m gpu: the fused step on CUDA (the torch formulation) against the rule's own
#    update, for every shipped celo file;
# 2. bench_celo_step.py --device cuda: the step times and state bytes on the GPU, table in OUT_DIR
#    (default runs/bench_celo_gpu/table.md).
# Without CUDA it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-runs/bench_celo_gpu}"
PY="${PYTHON:-python}"
if ! "$PY" -c "import torch, learned_opt" 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch and learned_opt (activate the project's environment, or set PYTHON)" >&2
    exit 1
fi
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA device here; nothing to check"
    exit 0
fi
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
timeout 240 "$PY" -m pytest -q -m gpu tests/test_fused.py
timeout 300 "$PY" experiments/benchmarks/bench_celo_step.py --device cuda --rounds 5 --repeats 20 --slow-steps 3 \
    --out "$OUT"
echo "gpu_check: table in $OUT/table.md"
