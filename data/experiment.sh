#!/bin/sh
# The StateX experiment (make experiment): for each family and seed,
#   1. pre-train a base model on the corpus mixed with recall tasks;
#   2. from that base, with the same data and token budget, post-train
#      (a) unchanged: LPT ("long post-training"), and
#      (b) StateX-expanded (reinit, the paper's recipe);
#   3. evaluate base, LPT and StateX (MQAR, passkey, validation bits/byte);
# then ./infer --summarize writes OUT/results.md and the charts.
#
#   sh data/experiment.sh [--quick] [OUT]     (default OUT: out/experiment)
#
# --quick runs the same pipeline with tiny budgets (a smoke test, minutes).
# FAMILIES="gla" SEEDS="1" in the environment run a part of it.
set -e
cd "$(dirname "$0")/.."
QUICK=0
if [ "$1" = "--quick" ]; then QUICK=1; shift; fi
OUT=${1:-out/experiment}
mkdir -p "$OUT"
[ -f data/train.txt ] && [ -f data/val.txt ] || sh data/prepare.sh

FAMILIES=${FAMILIES:-"gla mamba2"}
# pre-training: context 256; post-training: context 512 (longer, as in the paper)
PRE_STEPS=6000; POST_STEPS=1500; BATCH=8; PRE_T=256; POST_T=512; DEFAULT_SEEDS="1 2 3"
EVAL="--eval-scale 1 --passkey-max 4096"
if [ $QUICK = 1 ]; then
    PRE_STEPS=30; POST_STEPS=10; BATCH=4; PRE_T=128; POST_T=256; DEFAULT_SEEDS="1 2"
    EVAL="--eval-scale 0.05 --passkey-max 512"
fi
SEEDS=${SEEDS:-$DEFAULT_SEEDS}
# the data mix: three rows in four are recall rows (a quarter of them passkey,
# the rest packed MQAR instances of 2 to 64 pairs, log-uniform, with up to 64
# bytes of gap), the rest plain text
MIX="--recall-frac 0.75 --passkey-share 0.25 --mqar-min 2 --mqar-max 64 --mqar-gap 64"
COMMON="--batch $BATCH --eval-every 500 --save-every 500 --quiet $MIX"

for fam in $FAMILIES; do
    # StateX on layers 0 and 2 of 4. GLA: 4 heads merge into one (state x4 in
    # those layers); Mamba2: N grows from 8 to 32. Both re-initialised (reinit).
    if [ $fam = gla ]; then EXPAND="--expand reinit --expand-every 2"; else EXPAND="--expand reinit --expand-every 2 --expand-factor 4"; fi
    for s in $SEEDS; do
        base="$OUT/$fam-base-s$s.bin"
        ./train --preset exp-$fam --seed $s --steps $PRE_STEPS --seq-len $PRE_T --lr 2e-3 --warmup 200 $COMMON --out "$base"
        ./train --init "$base" --seed $s --steps $POST_STEPS --seq-len $POST_T --lr 1e-3 --warmup 50 $COMMON --out "$OUT/$fam-lpt-s$s.bin"
        ./train --init "$base" $EXPAND --seed $s --steps $POST_STEPS --seq-len $POST_T --lr 1e-3 --warmup 50 $COMMON --out "$OUT/$fam-statex-s$s.bin"
        for kind in base lpt statex; do
            ./infer --model "$OUT/$fam-$kind-s$s.bin" --eval $EVAL --eval-out "$OUT/$fam-$kind-s$s.eval"
        done
    done
done
./infer --summarize "$OUT"
