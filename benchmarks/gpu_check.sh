#!/usr/bin/env bash
# One GPU, about 8 minutes: the POPE fast path against batch-1 generate on a random
# LLaVA-1.5-7B-architecture model, then one purify batch and the peak memory of a QLoRA step.
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/pope_speed.py --random-7b --device cuda --dtype bfloat16 --num-questions 300 --batch-size 32
python benchmarks/gpu_check.py --device cuda
