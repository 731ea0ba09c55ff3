#!/usr/bin/env bash
# The GPU measurements docs/results.md still lacks, in one short run (a GPU machine lent for ~15 minutes, no
# network): the callback's training-step overhead vs. dense Lightning on Conv-2 and ResNet-20 (fused SGD and fused
# Adam; goal <= 1.02), and one prune-and-rewind round on ResNet-50 with the model on the GPU.
#
# Here, once (the GPU machine's Python lacks these; antlr4 comes as a source archive, so build its wheel here):
#   pip download --no-deps -d runs/wheels hydra-core omegaconf safetensors antlr4-python3-runtime==4.9.3
#   (cd runs/wheels && pip wheel --no-deps -w . antlr4-python3-runtime-4.9.3.tar.gz && rm ./*.tar.gz)
# There, from the repository root, with runs/wheels carried along:
#   bash benchmarks/gpu_checks.sh "$OUT"
# Each benchmark writes OUT/<name>.jsonl (one JSON line per measurement) and OUT/<name>.txt (its table); OUT/gpu.txt
# names the GPU, driver, torch and Lightning, and any benchmark that failed or ran out of time.
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_checks.sh OUT}
PAIRS=${PAIRS:-4} # fresh pairs of processes per row: 2 balanced groups (start order rotated)
mkdir -p "$OUT"
if compgen -G "runs/wheels/*.whl" > /dev/null; then
    python -m pip install --quiet --no-index --no-deps runs/wheels/*.whl || echo "wheels: install failed" >> "$OUT/gpu.txt"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT/gpu.txt" 2>&1
python -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'lightning', lightning.__version__, 'gpu', torch.cuda.get_device_name())" >> "$OUT/gpu.txt" 2>&1

bench() { # NAME SECONDS ARGS...: one benchmark, its JSON lines and table kept even when it fails
    local name=$1 limit=$2
    shift 2
    timeout "$limit" python -m benchmarks "$@" > "$OUT/$name.jsonl" 2> "$OUT/$name.txt"
    local code=$?
    if [[ $code -eq 124 ]]; then
        echo "$name: stopped at its ${limit} s limit; see $name.txt" >> "$OUT/gpu.txt"
    elif [[ $code -ne 0 ]]; then
        echo "$name: failed (exit $code); see $name.txt" >> "$OUT/gpu.txt"
    fi
}

bench mask_overhead 330 mask_overhead --models conv2 resnet20 --optimizers sgd_fused adam_fused --pairs "$PAIRS"
bench prune_round 120 prune_round --device cuda --repeats 3
cat "$OUT/gpu.txt"
