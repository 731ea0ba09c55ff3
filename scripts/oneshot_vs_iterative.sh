#!/usr/bin/env bash
# One-shot vs. iterative pruning of LeNet-300-100 on MNIST (Frankle & Carbin 2019, Fig. 4; Renda et al. 2020), at the
# same final sparsities, with the controls (reinit, random) on every level: for each seed, the iterative search
# (recipe mnist_lenet300, 15 levels: 3.5% of the hidden layers' weights left) and a multirun of one-shot searches
# (recipe mnist_lenet300_oneshot) to the sparsities of iterative levels LEVELS. All runs share one experiment name and
# carry the variant labels "iterative ticket" / "one-shot ticket", so the report draws them on one figure (one-shot
# runs at the iterative level of their sparsity) and compares their masks (report/masks/).
#
#   LOTTERY_DATA=/path/to/data scripts/oneshot_vs_iterative.sh [OUT] [SEEDS...]   (default: outputs/oneshot_vs_iterative 0 1 2)
#
# Environment: LEVELS (default "3 5 7 9 12 15"), STEPS (iterations per level, default 10000; the paper: 50000),
# CONTROLS (default [reinit,random]; empty: none), EXTRA (more Hydra overrides for every run, e.g. "preset=fast"),
# DRY_RUN=1 prints the commands instead of running them.
# Cost per seed: iterative 16 levels x 3 branches, one-shot 6 targets x (dense + 3 branches), about 70 trainings; at
# STEPS=10000 on the 2-core CPU (1-3 min each, shared) some 2-3 h per seed; seeds run side by side (one BLAS thread
# each). The dense level of every one-shot run repeats the iterative run's level 0 (same seed, same result).
# Smoke test in a minute, no data needed (no controls: before the level/branch protocol, the callback has none):
#   STEPS=30 LEVELS="1 2" CONTROLS= EXTRA="preset=fast data=synthetic data.num_train=600 data.num_test=100" \
#     scripts/oneshot_vs_iterative.sh /tmp/oneshot_smoke 0
set -euo pipefail

OUT=${1:-outputs/oneshot_vs_iterative}
shift || true
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(0 1 2)
LEVELS=${LEVELS:-3 5 7 9 12 15}
STEPS=${STEPS:-10000}
CONTROLS=${CONTROLS-[reinit,random]}
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"
LL=${LIGHTNING_LOTTERY:-lightning-lottery}
EXPERIMENT=lenet300_oneshot_vs_iterative
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# The one-shot targets: level k of the iterative search prunes 1 - 0.8^k of the hidden layers, 1 - 0.9^k of the output.
targets=()
for k in $LEVELS; do
    targets+=("$(awk -v k="$k" 'BEGIN { printf "{hidden:%.10g,output:%.10g}", 1 - 0.8^k, 1 - 0.9^k }')")
done
TARGETS=$(IFS=,; echo "${targets[*]}")

run() { if [[ -n ${DRY_RUN:-} ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }

arms() { # SEED: the iterative search, then the one-shot multirun
    local seed=$1
    local common=("experiment=$EXPERIMENT" "seed=$seed" "trainer.max_steps=$STEPS" trainer.enable_progress_bar=false
        report=false)
    [[ -z $CONTROLS ]] || common+=("lottery.controls=$CONTROLS")
    run "$LL" recipe=mnist_lenet300 "variant=iterative ticket" "${common[@]}" "${EXTRA_ARGS[@]}" \
        "hydra.run.dir=$OUT/seed$seed/iterative"
    run "$LL" -m recipe=mnist_lenet300_oneshot "${common[@]}" "${EXTRA_ARGS[@]}" "oneshot=$TARGETS" \
        "hydra.sweep.dir=$OUT/seed$seed/oneshot"
}

mkdir -p "$OUT"
pids=()
for seed in "${SEEDS[@]}"; do
    if [[ -n ${DRY_RUN:-} ]]; then
        arms "$seed"
    else
        arms "$seed" > "$OUT/seed$seed.log" 2>&1 &
        pids+=($!)
    fi
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
report="$(dirname "$(command -v "$LL")")/lightning-lottery-report"
run "$report" "$OUT" --out "$OUT/report"
exit "$status"
