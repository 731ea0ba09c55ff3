#!/usr/bin/env bash
# The ticket-transfer demo of docs/transfer.md (Morcos et al. 2019, scaled down to a 2-core CPU):
#   (a) tickets found on CIFAR-10 classes 0-4, trained on classes 5-9        -> OUT/cifar5to5/report
#   (b) tickets found on CIFAR-10 (all classes), trained on MNIST at 32x32x3  -> OUT/mnist/report
# Each target runs the four variants transferred / random / reinit / target, one sweep per seed (the first seed's
# sweep first, so a cut-short demo still has every variant), then one report over all its seeds.
# The sources run with seed 0 and the targets with seeds 1 and 2: a target seeded like its source draws the very
# same initial weights for every tensor of the same shape, and its "reinit" control would be no reinitialisation.
#
#   LOTTERY_DATA=/path/to/data scripts/transfer_demo.sh [OUT] [extra Hydra overrides for every run...]
#   SEEDS="1" scripts/transfer_demo.sh                          # one seed: about half the time
#   scripts/transfer_demo.sh /tmp/transfer_smoke preset=fast     # the whole pipeline in a few minutes
#
# Two jobs run side by side (one BLAS thread each, niced): the two sources, then the two targets. A source whose
# run finished (its report/report.md exists) is reused. Wall and CPU times go to OUT/times.txt.
set -euo pipefail

OUT=${1:-outputs/transfer_demo}
shift || true
EXTRA=("$@")
BIN=${LIGHTNING_LOTTERY_BIN:-$(dirname "$(command -v lightning-lottery || echo .venv/bin/lightning-lottery)")}
NICE=(nice -n "${NICE:-10}")
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(trainer.enable_progress_bar=false)
VARIANTS=transferred,random,reinit,target
SEEDS=${SEEDS:-1 2} # target seeds; never the sources' seed (0)

mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[transfer_demo] $1: wall $(($(date +%s) - start)) s" | tee -a "$OUT/times.txt"; }

ll() { "${NICE[@]}" "$BIN/lightning-lottery" "$@" "${COMMON[@]}" "${EXTRA[@]}"; }
wait_all() { local pid status=0; for pid in "$@"; do wait "$pid" || status=1; done; return "$status"; }

source_run() { # NAME [overrides...]: an ordinary lottery search; tickets in OUT/NAME/lottery/round_XX/
    local name=$1
    shift
    if [[ -f "$OUT/$name/report/report.md" ]]; then
        echo "[transfer_demo] reusing $OUT/$name"
        return
    fi
    ll recipe=transfer_demo_cifar_source seed=0 "hydra.run.dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
}

target_runs() { # RECIPE NAME SOURCE: the four variants, one sweep per seed, then one report over the seeds
    local recipe=$1 name=$2 src=$3 seed
    for seed in $SEEDS; do
        ll -m "recipe=$recipe" "transfer.ticket=$OUT/$src" "transfer.variant=$VARIANTS" "seed=$seed" report=false \
            "hydra.sweep.dir=$OUT/$name/seed_$seed" >> "$OUT/$name.log" 2>&1
        stamp "$name seed $seed done"
    done
    "$BIN/lightning-lottery-report" "$OUT/$name" --out "$OUT/$name/report" >> "$OUT/$name.log" 2>&1
}

# 1. Sources: ordinary lottery searches.
source_run source_cifar5 "data.classes=[0,1,2,3,4]" &
a=$!
source_run source_cifar10 &
wait_all "$a" $!
stamp "sources done"

# 2. Targets.
target_runs transfer_demo_cifar5to5 cifar5to5 source_cifar5 &
a=$!
target_runs transfer_demo_mnist mnist source_cifar10 &
wait_all "$a" $!
stamp "targets done"
times | tail -1 | awk '{print "[transfer_demo] CPU of all runs: user " $1 ", system " $2}' | tee -a "$OUT/times.txt"
ls "$OUT"/cifar5to5/report "$OUT"/mnist/report
