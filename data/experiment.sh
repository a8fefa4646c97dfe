#!/bin/sh
# The StateX experiment, round two (make experiment). README.md, "The StateX
# experiment", says why it is built this way and what it found.
#
#   1. Capacity. For each family, train from scratch (a) the base model and
#      (b) the same model with StateX's expanded state in layer 0 (GLA: its 4
#      heads as one head; Mamba2: N x 4). Each trains at every learning rate of
#      the sweep with seed 1 and keeps its best rate (highest mean MQAR
#      accuracy at n = 4, 8, 16), which then trains seeds 2 and 3.
#   2. Post-training from each (a): LPT (no expansion), StateX `reinit` (the
#      paper's recipe) and StateX with inherited weights (GLA `merge`, Mamba2
#      `grow`); the same data, steps and learning rate (the base's), per seed.
#   3. Evaluate every model (./infer --eval); ./infer --summarize writes
#      OUT/results.md and the charts, and OUT/sweep.md tables the sweep.
#
#   sh data/experiment.sh [--quick] [OUT]     (default OUT: out/experiment)
#
# --quick runs the same pipeline with tiny budgets (a smoke test, a minute).
# FAMILIES="gla" SEEDS="1" in the environment run a part of it; JOBS (default
# 2) runs at a time. Each run is single-threaded: at this size one run per
# core is faster than one run across cores, and a run's result does not depend
# on what runs beside it. Each run's output goes to OUT/logs/.
set -e
cd "$(dirname "$0")/.."
QUICK=0
if [ "$1" = "--quick" ]; then QUICK=1; shift; fi
OUT=${1:-out/experiment}
mkdir -p "$OUT/sweep" "$OUT/logs"
[ -f data/train.txt ] && [ -f data/val.txt ] || sh data/prepare.sh

FAMILIES=${FAMILIES:-"gla mamba2"}
JOBS=${JOBS:-2}
# Pre-training: 32 rows of 64 bytes a step; nine rows in ten are MQAR, packed
# instances of 2 to 16 pairs, the tenth is text. Post-training: 16 rows of 128
# bytes (the same 2048 tokens a step, a 2x longer context); recall rows now
# also hold up to 32 bytes of text between pairs and queries, and three in
# ten of them are a passkey prompt (64 to 121 bytes) with its answer.
PRE_STEPS=4000; PRE_B=32; PRE_T=64; POST_STEPS=1500; POST_B=16; POST_T=128
SWEEP_LRS="3e-3 1e-2 3e-2"; DEFAULT_SEEDS="1 2 3"
EVAL="--eval-scale 1 --mqar-gap 32 --passkey-min 128 --passkey-max 1024"
if [ $QUICK = 1 ]; then
    PRE_STEPS=30; PRE_B=4; POST_STEPS=10; POST_B=2
    SWEEP_LRS="1e-2 3e-2"; DEFAULT_SEEDS="1 2"
    EVAL="--eval-scale 0.05 --mqar-gap 32 --passkey-min 128 --passkey-max 256"
fi
SEEDS=${SEEDS:-$DEFAULT_SEEDS}
PRE="--steps $PRE_STEPS --batch $PRE_B --seq-len $PRE_T --warmup 200 --eval-every 0 --save-every 0 --quiet \
     --recall-frac 0.9 --mqar-min 2 --mqar-max 16"
POST="--steps $POST_STEPS --batch $POST_B --seq-len $POST_T --warmup 100 --eval-every 0 --save-every 0 --quiet \
      --recall-frac 0.9 --passkey-share 0.3 --mqar-min 2 --mqar-max 16 --mqar-gap 32"

# The models (presets exp-gla, exp-mamba2): 2 layers of d_model 64, each
# layer's state 512 floats; (b) has 2048 in layer 0, where StateX expands.
arch() {  # family kind -> flags: the preset is (a); (b) expands layer 0
    case "$1-$2" in
        gla-base) echo "--preset exp-gla" ;;       gla-big) echo "--preset exp-gla --heads 1,4" ;;
        mamba2-base) echo "--preset exp-mamba2" ;; mamba2-big) echo "--preset exp-mamba2 --d-state 16,4" ;;
    esac
}

# Runs the command lines of file $1, JOBS at a time; stops the experiment if
# any fails (after the others finish), naming its log.
pool() {
    tr '\n' '\0' < "$1" | xargs -0 -r -n 1 -P "$JOBS" sh -c
}
# One line for the pool: run "$2" with one thread, its output to logs/$1.log.
job() {
    echo "{ $2; } > $OUT/logs/$1.log 2>&1 || { echo 'failed: $OUT/logs/$1.log'; tail -3 $OUT/logs/$1.log; exit 1; }"
}
train_eval() {  # name out-prefix train-flags: train, then evaluate
    job "$1" "OMP_NUM_THREADS=1 ./train $3 --out $2.bin && OMP_NUM_THREADS=1 ./infer --model $2.bin --eval $EVAL --eval-out $2.eval"
}
# mean MQAR accuracy at n = 4, 8, 16 without a gap, from an .eval.tsv
score() { awk -F'\t' '$1 == "mqar" && $3 == 0 && $2 <= 16 { s += $4; n++ } END { printf "%.5f", n ? s / n : 0 }' "$1"; }

# 1a. the sweep, seed 1
: > "$OUT/jobs"
for fam in $FAMILIES; do for kind in base big; do for lr in $SWEEP_LRS; do
    train_eval "$fam-$kind-lr$lr-s1" "$OUT/sweep/$fam-$kind-lr$lr-s1" "$(arch $fam $kind) --seed 1 --lr $lr $PRE" >> "$OUT/jobs"
done; done; done
pool "$OUT/jobs"

# 1b. each (family, kind) keeps its best rate: seed 1 from the sweep, the other seeds trained now
: > "$OUT/jobs"
printf "# Learning-rate sweep (seed 1)\n\nMean MQAR accuracy at n = 4, 8, 16 without a gap, and bits/byte; * marks the rate kept.\n\n| model | lr | MQAR mean (%%) | bits/byte |\n|---|---|---|---|\n" > "$OUT/sweep.md"
for fam in $FAMILIES; do for kind in base big; do
    best=""; best_score=-1
    for lr in $SWEEP_LRS; do
        s=$(score "$OUT/sweep/$fam-$kind-lr$lr-s1.eval.tsv")
        if awk "BEGIN { exit !($s > $best_score) }"; then best=$lr; best_score=$s; fi
    done
    eval "LR_${fam}_$kind=$best"
    for lr in $SWEEP_LRS; do
        f="$OUT/sweep/$fam-$kind-lr$lr-s1"
        mark=""; [ "$lr" = "$best" ] && mark=" *"
        printf "| %s %s | %s%s | %.1f | %s |\n" $fam $kind $lr "$mark" "$(awk "BEGIN { print 100 * $(score $f.eval.tsv) }")" \
            "$(awk -F'\t' '$1 == "bpb" { print $2 }' $f.eval.tsv)" >> "$OUT/sweep.md"
    done
    for ext in bin bin.stats eval.tsv; do cp "$OUT/sweep/$fam-$kind-lr$best-s1.$ext" "$OUT/$fam-$kind-s1.$ext"; done
    for s in $SEEDS; do
        [ $s = 1 ] && continue
        train_eval "$fam-$kind-s$s" "$OUT/$fam-$kind-s$s" "$(arch $fam $kind) --seed $s --lr $best $PRE" >> "$OUT/jobs"
    done
done; done
pool "$OUT/jobs"

# 2. post-training from each base, at the base's learning rate
: > "$OUT/jobs"
for fam in $FAMILIES; do
    eval "lr=\$LR_${fam}_base"
    if [ $fam = gla ]; then inherit=merge; factor=""; else inherit=grow; factor="--expand-factor 4"; fi
    for s in $SEEDS; do
        base="--init $OUT/$fam-base-s$s.bin --seed $s --lr $lr $POST"
        train_eval "$fam-lpt-s$s" "$OUT/$fam-lpt-s$s" "$base" >> "$OUT/jobs"
        train_eval "$fam-statex-s$s" "$OUT/$fam-statex-s$s" "$base --expand reinit --expand-every 2 $factor" >> "$OUT/jobs"
        train_eval "$fam-$inherit-s$s" "$OUT/$fam-$inherit-s$s" "$base --expand $inherit --expand-every 2 $factor" >> "$OUT/jobs"
    done
done
pool "$OUT/jobs"
rm -f "$OUT/jobs"

cat "$OUT/sweep.md"
./infer --summarize "$OUT"
