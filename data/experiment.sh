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
set -e
cd "$(dirname "$0")/.."
QUICK=0
if [ "$1" = "--quick" ]; then QUICK=1; shift; fi
OUT=${1:-out/experiment}
mkdir -p "$OUT"

SEEDS="1 2 3"
# pre-training: context 256; post-training: context 512 (longer, as in the paper)
PRE_STEPS=3000; POST_STEPS=1000; BATCH=8; PRE_T=256; POST_T=512
EVAL="--eval-scale 1 --passkey-max 4096"
if [ $QUICK = 1 ]; then
    SEEDS="1 2"; PRE_STEPS=30; POST_STEPS=10; BATCH=4; PRE_T=128; POST_T=256
    EVAL="--eval-scale 0.05 --passkey-max 512"
fi
# the data mix: half the rows start with a recall task (passkey or MQAR with up
# to 64 pairs and up to 64 bytes of gap), the rest is plain text
MIX="--recall-frac 0.5 --passkey-share 0.25 --mqar-min 4 --mqar-max 64 --mqar-gap 64"
COMMON="--batch $BATCH --eval-every 250 --save-every 500 --quiet $MIX"

for fam in gla mamba2; do
    # GLA: 4 layers of 4 heads; StateX merges layer 0 of every 4 into one head (state x4 there).
    # Mamba2: 4 layers with N = 8; StateX grows N to 32 in layers 0 and 2.
    if [ $fam = gla ]; then EXPAND="--expand reinit --expand-every 4"; else EXPAND="--expand reinit --expand-every 2 --expand-factor 4"; fi
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
