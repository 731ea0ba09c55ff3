#!/usr/bin/env bash
# The LeNet-300-100 reproduction of docs/results.md (Frankle & Carbin 2019, Figures 3-4) on real MNIST: one search
# per seed with the paper's controls as branches of every level (lottery.controls=[reinit,random]), 15 pruning levels
# (3.5% of the hidden layers' weights left), STEPS iterations per level (the paper: 50,000), then one report.
#
#   LOTTERY_DATA=/path/to/data scripts/reproduce_lenet300.sh [OUT] [STEPS] [SEEDS...]
#       (default: runs/lenet300 20000 0 1 2 3 4)
#
# Seeds run two at a time (one BLAS thread each). A killed seed resumes where it stopped: run the script again.
set -euo pipefail

OUT=${1:-runs/lenet300}
STEPS=${2:-20000}
shift 2 || true
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1 2 3 4)
LL=${LIGHTNING_LOTTERY:-lightning-lottery}
PARALLEL=${PARALLEL:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

search() { # SEED: one seed's whole search (resumed from its last checkpoint when the folder has one)
    local seed=$1
    "$LL" recipe=mnist_lenet300 "seed=$seed" "trainer.max_steps=$STEPS" trainer.enable_progress_bar=false \
        report=false ckpt_path=auto "hydra.run.dir=$OUT/seed$seed"
}

mkdir -p "$OUT"
running=0
for seed in "${SEEDS[@]}"; do
    search "$seed" > "$OUT/seed$seed.log" 2>&1 &
    running=$((running + 1))
    if [[ $running -ge $PARALLEL ]]; then
        wait -n
        running=$((running - 1))
    fi
done
wait
"$(dirname "$(command -v "$LL")")/lightning-lottery-report" "$OUT" --out "$OUT/report"
