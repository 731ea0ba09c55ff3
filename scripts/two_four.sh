#!/usr/bin/env bash
# 2:4 tickets: does weight rewinding find better 2:4 subnetworks than fine-tuning, and does either beat the random
# 2:4 control? (docs/sparse.md has the protocol and the claim rule.)
#
# Per seed, two searches of one pruned level each on the recipe RECIPE (default mnist_lenet300: Adam 1.2e-3, batch
# 60, 5K validation images); level 0 trains dense and is identical in both; level 1 prunes every pruned tensor to 2:4
# by magnitude:
#   rewind     lottery.rewind=init, controls [random]: the 2:4 ticket from θ₀, and the random 2:4 control from θ₀
#   finetune   lottery.rewind=finetune: the trained dense weights under the 2:4 mask, trained on for the same budget
# Every branch trains STEPS iterations (the paper's LeNet rounds are 50,000; the CPU default is shortened to 10,000).
# OVERRIDES adds Hydra overrides to every run (split on spaces). A killed seed resumes where it stopped: run the
# script again.
#
#   LOTTERY_DATA=/path/to/data scripts/two_four.sh [OUT] [SEEDS...]   (default: runs/lenet300_2of4 0 1 2)
#   RECIPE=mnist_lenet300 STEPS=10000 CONTROLS=random OVERRIDES= JOBS=1 LIGHTNING_LOTTERY=lightning-lottery
#   PYTHON=python TOLERANCE=0.2   (environment, defaults)
#
# Conv-2 on CIFAR-10 (its first convolution has 3 input channels, so it stays dense):
#   RECIPE=cifar10_conv2 OVERRIDES="lottery.exclude=[model.conv1.weight]" scripts/two_four.sh runs/conv2_2of4
#
# Then: python scripts/two_four_summary.py OUT   (test accuracy at early stop, paired by seed, 95% CIs, labels).
set -euo pipefail

OUT=${1:-runs/lenet300_2of4}
shift || true
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1 2)
RECIPE=${RECIPE:-mnist_lenet300}
STEPS=${STEPS:-10000}
read -r -a EXTRA <<< "${OVERRIDES:-}"
TOLERANCE=${TOLERANCE:-0.2}
CONTROLS=${CONTROLS:-random}
JOBS=${JOBS:-1}
LL=${LIGHTNING_LOTTERY:-lightning-lottery}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The protocol needs LotteryTicketCallback(structure=..., controls=...); refuse early and clearly without them.
"$PYTHON" - <<'PY'
import inspect
import sys

from lightning_lottery import LotteryTicketCallback

missing = [p for p in ("structure", "controls") if p not in inspect.signature(LotteryTicketCallback).parameters]
if missing:
    print(f"two_four.sh: this lightning_lottery has no LotteryTicketCallback({', '.join(missing)}=...)", file=sys.stderr)
    sys.exit(2)
PY

arms() { # SEED
    local seed=$1
    local common=("recipe=$RECIPE" "seed=$seed" "trainer.max_steps=$STEPS" trainer.enable_progress_bar=false
        report=false ckpt_path=auto lottery.rounds=1 lottery.structure=2:4 "${EXTRA[@]}")
    "$LL" "${common[@]}" lottery.rewind=init "lottery.controls=[$CONTROLS]" "hydra.run.dir=$OUT/seed$seed/rewind"
    "$LL" "${common[@]}" lottery.rewind=finetune "lottery.controls=[]" "hydra.run.dir=$OUT/seed$seed/finetune"
}

mkdir -p "$OUT"
running=0
failed=0
for seed in "${SEEDS[@]}"; do
    arms "$seed" > "$OUT/seed$seed.log" 2>&1 &
    running=$((running + 1))
    if ((running >= JOBS)); then
        wait -n || failed=1
        running=$((running - 1))
    fi
done
while ((running > 0)); do
    wait -n || failed=1
    running=$((running - 1))
done
if ((failed)); then
    echo "two_four.sh: a seed failed; see $OUT/seed*.log" >&2
    exit 1
fi
"$PYTHON" "$(dirname "$0")/two_four_summary.py" "$OUT" --tolerance "$TOLERANCE" | tee "$OUT/summary.md"
