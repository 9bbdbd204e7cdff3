#!/usr/bin/env bash
# The GPU figures for the notes, in one short run (about 6 minutes on an H200; not part of the tests):
# the attention kernels our model reaches in bf16, then one training step of base in bf16 against
# transformers: full batches at seq 128 and half padding at seq 512, tokens/s and MFU of ours (unpadded
# and padded) and of transformers, eager and then compiled. Needs torch and transformers with a CUDA device.
#     bash benchmarks/gpu_checks.sh 2>&1 | tee gpu_checks.log
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { timeout "$1" python3 benchmarks/model_step.py --device cuda --dtype bf16 --steps 10 --presets base \
    --workloads full:256x128 half:64x512 "${@:2}"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
timeout 120 python3 benchmarks/sdpa_kernels.py
step 150
step 300 --compile
