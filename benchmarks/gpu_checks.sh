#!/usr/bin/env bash
# The GPU checks of pretraining, as one command for a GPU machine (one device call):
#   1. what the machine has (GPU, driver, torch, CUDA, NCCL);
#   2. the GPU tests (pytest -m gpu): losses on the device, a ViT-S/16 DINO step under bf16 autocast against
#      fp32, and - where Ray is installed - region DINO (bf16) and SLPD (fp16 + GradScaler) through Ray Train
#      with NCCL, checkpoint and resume;
#   3. benchmarks/pretrain.py tiles: ViT-S/16 DINO images/s on the GPU (bf16) at two batch sizes.
# Logs go to $OUT (the device tool's result folder) or /tmp/wsiscale-gpu-checks.
#
#   bash benchmarks/gpu_checks.sh            # PYTHON=... picks the interpreter (default python3)
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
out=${OUT:-/tmp/wsiscale-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 WSISCALE_NO_PROGRESS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$py" - <<'PY'
import torch

print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("nccl", torch.cuda.nccl.version(), "device", torch.cuda.get_device_name())
PY
} 2>&1 | tee "$out/machine.txt"
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 2)'; then
  echo "torch sees no CUDA device: run these checks on a GPU machine" >&2
  exit 2
fi
rc=0
"$py" -m pytest -m gpu -p no:cacheprovider -q -rs tests/test_pretrain_gpu.py 2>&1 | tee "$out/pytest-gpu.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
for batch in 32 64; do
  "$py" benchmarks/pretrain.py tiles --batch "$batch" --steps 20 --device cuda 2>&1 | tee -a "$out/bench-tiles.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
done
exit "$rc"
