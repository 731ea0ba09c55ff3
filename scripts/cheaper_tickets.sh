#!/usr/bin/env bash
# Cheaper routes to tickets and their baselines on LeNet-300-100 / MNIST (docs/cheaper_tickets.md), STEPS iterations
# per level (default 5,000; the paper's LeNet levels are 50,000), for each seed:
#   imp         iterative magnitude pruning, 15 levels (3.6% of the weights left), rewind to θ₀, no controls
#   early_bird  the same search, each level ended once its next mask settles (You et al. 2020: every 100 steps, the
#               last 5 normalised Hamming distances below 0.1); the last level trains in full
#   snip, grasp, synflow, magnitude_init
#               pruning at initialisation, one mask per sparsity of IMP levels 3, 6, 9, 12 and 15 (global, the
#               papers' scope), each trained from θ₀, with the random control (the mask shuffled within each
#               layer: Frankle et al. 2021's sanity check)
# All runs of a seed share one experiment name, so one report draws them together (the accuracy-vs-compute figure
# for early-bird, the mask overlaps of every variant).
#
#   LOTTERY_DATA=/path/to/data scripts/cheaper_tickets.sh [OUT] [SEEDS...]   (default: runs/cheaper_tickets 0 1 2)
set -euo pipefail

OUT=${1:-runs/cheaper_tickets}
shift || true
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1 2)
STEPS=${STEPS:-5000}
LL=${LIGHTNING_LOTTERY:-lightning-lottery}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Overall sparsity of IMP levels 3, 6, 9, 12, 15 (hidden layers 20%, output layer 10% per level; 266,200 weights).
AT_IMP_LEVELS="[0.487185,0.736844,0.864831,0.930478,0.964174]"

run() { # NAME SEED OVERRIDES...
    local name=$1 seed=$2
    shift 2
    "$LL" recipe=mnist_lenet300 experiment=lenet300_cheaper_tickets "seed=$seed" "trainer.max_steps=$STEPS" \
        trainer.enable_progress_bar=false report=false ckpt_path=auto "hydra.run.dir=$OUT/$name/seed$seed" "$@"
}

mkdir -p "$OUT"
for seed in "${SEEDS[@]}"; do
    run imp "$seed" "lottery.controls=[]" "variant=IMP ticket" > "$OUT/imp_seed$seed.log" 2>&1
    run early_bird "$seed" "lottery.controls=[]" "lottery.early_bird={every:100,patience:5,threshold:0.1}" \
        "variant=IMP ticket with early-bird levels" > "$OUT/early_bird_seed$seed.log" 2>&1
    for method in snip grasp synflow magnitude_init; do
        run "$method" "$seed" "lottery.pruning=$method" lottery.scope=global lottery.layer_amounts=null \
            lottery.rounds=5 "lottery.amount=$AT_IMP_LEVELS" "lottery.controls=[random]" "variant=$method" \
            > "$OUT/${method}_seed$seed.log" 2>&1
    done
done
"$(dirname "$(command -v "$LL")")/lightning-lottery-report" "$OUT" --out "$OUT/report"
