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
# pre-training: 32 rows of 64 bytes; post-training: 8 rows of 512 (an 8x
# longer context, as the paper post-trains at a longer one); 2048 tokens a step
PRE_STEPS=5000; PRE_B=32; PRE_T=64; POST_STEPS=1200; POST_B=8; POST_T=512; DEFAULT_SEEDS="1 2 3"
EVAL="--eval-scale 1 --passkey-max 4096"
if [ $QUICK = 1 ]; then
    PRE_STEPS=30; PRE_B=4; PRE_T=64; POST_STEPS=10; POST_B=2; POST_T=256; DEFAULT_SEEDS="1 2"
    EVAL="--eval-scale 0.05 --passkey-max 512"
fi
SEEDS=${SEEDS:-$DEFAULT_SEEDS}
# The data: three rows in four are recall rows (a fifth of them a passkey
# prompt, the rest MQAR instances packed back to back, pairs log-uniform), the
# rest plain text. A curriculum: the base sees small instances (2 to 8 pairs,
# no gap) in short rows; post-training, for LPT and StateX alike, brings up to
# 64 pairs and gaps of up to 64 bytes. (Trained on the full range from the
# start, no model learned MQAR at this budget; GLA only learned it from the
# smallest instances in short rows.)
PRE_MIX="--recall-frac 0.75 --passkey-share 0.2 --mqar-min 2 --mqar-max 8"
POST_MIX="--recall-frac 0.75 --passkey-share 0.2 --mqar-min 2 --mqar-max 64 --mqar-gap 64"
PRE="--steps $PRE_STEPS --batch $PRE_B --seq-len $PRE_T --lr 2e-3 --warmup 200 --eval-every 500 --save-every 1000 --quiet $PRE_MIX"
POST="--steps $POST_STEPS --batch $POST_B --seq-len $POST_T --lr 1e-3 --warmup 50 --eval-every 300 --save-every 600 --quiet $POST_MIX"

for fam in $FAMILIES; do
    # StateX on layers 0 and 2 of 4. GLA: 4 heads merge into one (state x4 in
    # those layers); Mamba2: N grows from 8 to 32. Both re-initialised (reinit).
    if [ $fam = gla ]; then EXPAND="--expand reinit --expand-every 2"; else EXPAND="--expand reinit --expand-every 2 --expand-factor 4"; fi
    for s in $SEEDS; do
        base="$OUT/$fam-base-s$s.bin"
        ./train --preset exp-$fam --seed $s $PRE --out "$base"
        ./train --init "$base" --seed $s $POST --out "$OUT/$fam-lpt-s$s.bin"
        ./train --init "$base" $EXPAND --seed $s $POST --out "$OUT/$fam-statex-s$s.bin"
        for kind in base lpt statex; do
            ./infer --model "$OUT/$fam-$kind-s$s.bin" --eval $EVAL --eval-out "$OUT/$fam-$kind-s$s.eval"
        done
    done
done
./infer --summarize "$OUT"
