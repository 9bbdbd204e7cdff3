#!/usr/bin/env bash
# The GPU figures for the note: attention kernels reached in bf16, then one training step of base (seq 128 and
# 512) and large against transformers, eager and compiled. Needs torch and transformers with a CUDA device.
set -u
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { python3 benchmarks/model_step.py --device cuda --dtype bf16 --steps 10 "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 benchmarks/sdpa_kernels.py
step --presets base --seq 128 --batch 256
step --presets base --seq 512 --batch 64
step --presets large --seq 128 --batch 256
timeout 300 python3 benchmarks/model_step.py --device cuda --dtype bf16 --steps 10 --compile \
    --presets base --seq 128 --batch 256
