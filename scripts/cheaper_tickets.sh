#!/usr/bin/env bash
# Cheaper routes to tickets and their baselines (docs/cheaper_tickets.md), STEPS iterations per level, for each seed:
#   imp         iterative magnitude pruning, ROUNDS levels, rewind to θ₀, no controls
#   early_bird  the same search, each level ended once its next mask settles (You et al. 2020: every 100 steps, the
#               last 5 normalised Hamming distances below 0.1); the last level trains in full
#   snip, grasp, synflow, magnitude_init
#               pruning at initialisation, one mask per sparsity in AT_IMP_LEVELS (global, the papers' scope), each
#               trained from θ₀, with the random control (the mask shuffled within each layer: Frankle et al.
#               2021's sanity check)
# All runs of a seed share one experiment name, so one report draws them together (the accuracy-vs-compute figure
# for early-bird, the mask overlaps of every variant). A killed run resumes where it stopped: run the script again.
#
#   LOTTERY_DATA=/path/to/data scripts/cheaper_tickets.sh [OUT] [SEEDS...]   (default: runs/cheaper_tickets 0 1 2)
#
# Environment (defaults: LeNet-300-100 on MNIST, 5,000 of the paper's 50,000 iterations per level, 15 levels, PaI
# at the overall sparsity of IMP levels 3, 6, 9, 12 and 15: hidden layers 20%, output layer 10% per level, 266,200
# weights): RECIPE=mnist_lenet300 EXPERIMENT=lenet300_cheaper_tickets STEPS=5000 ROUNDS=15
# AT_IMP_LEVELS=[0.487185,...] ARMS="imp early_bird snip grasp synflow magnitude_init" (the arms to run, in this
# order) OVERRIDES= (Hydra overrides for every run, split on spaces) REPORT=1 (0: no report at the end).
#
# Conv-2 on CIFAR-10 at a CPU budget (1,000 of the paper's 20,000 iterations per level, 4 levels; PaI at level 4's
# 58.8% sparsity: convolutions and the output layer 10%, the other fully connected layers 20% per level):
#   RECIPE=cifar10_conv2 EXPERIMENT=conv2_cheaper_tickets STEPS=1000 ROUNDS=4 AT_IMP_LEVELS="[0.588042]" \
#   OVERRIDES="trainer.val_check_interval=250 +data.eval_batch_size=60" scripts/cheaper_tickets.sh runs/conv2_cheaper
set -euo pipefail

OUT=${1:-runs/cheaper_tickets}
shift || true
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1 2)
RECIPE=${RECIPE:-mnist_lenet300}
EXPERIMENT=${EXPERIMENT:-lenet300_cheaper_tickets}
STEPS=${STEPS:-5000}
ROUNDS=${ROUNDS:-15}
AT_IMP_LEVELS=${AT_IMP_LEVELS:-"[0.487185,0.736844,0.864831,0.930478,0.964174]"}
KNOWN_ARMS="imp early_bird snip grasp synflow magnitude_init"
read -r -a ARMS <<< "${ARMS:-$KNOWN_ARMS}"
read -r -a EXTRA <<< "${OVERRIDES:-}"
LL=${LIGHTNING_LOTTERY:-lightning-lottery}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# PaI runs one level per target sparsity.
IFS=, read -r -a TARGETS <<< "${AT_IMP_LEVELS//[\[\] ]/}"

run() { # NAME SEED OVERRIDES...
    local name=$1 seed=$2
    shift 2
    "$LL" "recipe=$RECIPE" "experiment=$EXPERIMENT" "seed=$seed" "trainer.max_steps=$STEPS" \
        trainer.enable_progress_bar=false report=false ckpt_path=auto "hydra.run.dir=$OUT/$name/seed$seed" \
        "${EXTRA[@]}" "$@"
}

arm() { # NAME SEED
    local name=$1 seed=$2
    case $name in
    imp) run imp "$seed" "lottery.rounds=$ROUNDS" "lottery.controls=[]" "variant=IMP ticket" ;;
    early_bird)
        run early_bird "$seed" "lottery.rounds=$ROUNDS" "lottery.controls=[]" \
            "lottery.early_bird={every:100,patience:5,threshold:0.1}" "variant=IMP ticket with early-bird levels"
        ;;
    snip | grasp | synflow | magnitude_init)
        run "$name" "$seed" "lottery.pruning=$name" lottery.scope=global lottery.layer_amounts=null \
            "lottery.rounds=${#TARGETS[@]}" "lottery.amount=$AT_IMP_LEVELS" "lottery.controls=[random]" "variant=$name"
        ;;
    esac
}

for name in "${ARMS[@]}"; do # refuse a typo before hours of training
    if [[ " $KNOWN_ARMS " != *" $name "* ]]; then
        echo "cheaper_tickets.sh: unknown arm '$name' in ARMS (allowed: $KNOWN_ARMS)" >&2
        exit 2
    fi
done
mkdir -p "$OUT"
for seed in "${SEEDS[@]}"; do
    for name in "${ARMS[@]}"; do
        arm "$name" "$seed" > "$OUT/${name}_seed$seed.log" 2>&1
    done
done
if [[ ${REPORT:-1} != 0 ]]; then
    "$(dirname "$(command -v "$LL")")/lightning-lottery-report" "$OUT" --out "$OUT/report"
fi
