#!/usr/bin/env bash
# The LeNet-300-100 reproduction of docs/results.md on real MNIST: ticket (rewind to θ₀) and random reinit, 15 rounds
# each (3.5% of the hidden layers' weights left), and random pruning in 5 rounds of 3 (random masks need no training
# in between: the same levels as rounds 3, 6, ..., 15), for each seed; prune-and-fine-tune (no rewind) for the first
# seed, 11 rounds (8.7% left). 10,000 iterations per round instead of the paper's 50,000.
#
#   LOTTERY_DATA=/path/to/data scripts/reproduce_lenet300.sh [OUT] [SEEDS...]     (default: outputs/lenet300 0 1)
#
# Each seed's arms run one after another; seeds run side by side (one BLAS thread each). Then one report.
set -euo pipefail

OUT=${1:-outputs/lenet300}
shift || true
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1)
LL=${LIGHTNING_LOTTERY:-lightning-lottery}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

arms() { # SEED: the arms of one seed
    local seed=$1
    local common=(recipe=mnist_lenet300 "seed=$seed" trainer.max_steps=10000 trainer.enable_progress_bar=false report=false)
    "$LL" -m "${common[@]}" lottery.rounds=15 lottery.rewind=init,reinit "hydra.sweep.dir=$OUT/seed$seed/rewind"
    "$LL" "${common[@]}" lottery.rounds=5 lottery.pruning=random lottery.amount=0.488 \
        "lottery.layer_amounts={model.fc3.weight: 0.271}" "hydra.run.dir=$OUT/seed$seed/random_pruning/0"
    if [[ $seed == "${SEEDS[0]}" ]]; then
        "$LL" "${common[@]}" lottery.rounds=11 lottery.rewind=none "hydra.run.dir=$OUT/seed$seed/finetune/0"
    fi
}

mkdir -p "$OUT"
pids=()
for seed in "${SEEDS[@]}"; do
    arms "$seed" > "$OUT/seed$seed.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$(dirname "$(command -v "$LL")")/lightning-lottery-report" "$OUT" --out "$OUT/report"
