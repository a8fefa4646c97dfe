#!/bin/sh
# The kill test: kill -9 training at random moments, half of them while a
# checkpoint is being saved, and check after each kill that the pair on disk
# resumes and ends bit for bit where an uninterrupted run does, leaving no
# temporary file behind.
#
#   sh tests/kill_test.sh [KILLS] [SEED] [DIR]    (default 3 kills, seed 1)
#
# Run from the repository root (it uses ./train). The suite runs 3 kills;
# `sh tests/kill_test.sh 20` is the longer check. Exit status 0 when every
# kill left a resumable pair, and every kill was one (a kill before the first
# save leaves nothing to check: it is not counted, and the mid-save kills wait
# for a first save, so they hit a later one).
set -u
KILLS=${1:-3}
SEED=${2:-1}
DIR=${3:-/tmp/statex_kill_$$}
rm -rf "$DIR"
mkdir -p "$DIR/v"
# one thread: quick, and steady on a busy machine
export OMP_NUM_THREADS=1
# a tiny GLA model that saves after every step, so saves are frequent
A="--family gla --d-model 32 --n-layer 2 --key-dim 16 --value-dim 32 --heads 2 --gate-rank 4 --mlp-hidden 64
   --steps 40 --batch 2 --seq-len 32 --warmup 3 --eval-every 7 --eval-rows 3 --save-every 1 --seed 5 --quiet"
fail() { echo "kill test: FAILED: $*"; exit 1; }
# uniform in [0, 1), from a seeded linear congruential sequence
x=$((SEED * 7919 + 1))
rnd() { x=$(((x * 1103515245 + 12345) % 2147483648)); r=$(awk -v x="$x" 'BEGIN { printf "%.4f", x / 2147483648 }'); }

./train $A --out "$DIR/ref.bin" >/dev/null 2>&1 || fail "the uninterrupted run failed"
K="$DIR/k.bin"
pairs=0
i=0
tries=0
while [ "$i" -lt "$KILLS" ]; do
    i=$((i + 1))
    tries=$((tries + 1))
    [ "$tries" -le $((4 * KILLS)) ] || fail "only $pairs of $KILLS kills left a pair to check after $tries tries"
    if [ -e "$K" ]; then ./train --resume "$K" --quiet >"$DIR/log" 2>&1 &
    else ./train $A --out "$K" >"$DIR/log" 2>&1 & fi
    pid=$!
    rnd
    if awk -v r="$r" 'BEGIN { exit !(r < 0.5) }'; then
        # mid-save: as soon as one of the save's files shows up; which one
        # depends on r: the .opt being written, the .opt written but the model
        # not yet, the model being written (polls are builtins, microseconds)
        f=$(awk -v r="$r" 'BEGIN { print (r < 0.17) ? ".opt.next.tmp" : (r < 0.34) ? ".opt.next" : ".tmp" }')
        polls=2000000
        while [ ! -e "$K" ] && [ "$polls" -gt 0 ]; do polls=$((polls - 1)); done  # a first save done
        while [ ! -e "$K$f" ] && [ "$polls" -gt 0 ]; do polls=$((polls - 1)); done
        how="mid-save, on $f"
    else
        sleep "$(awk -v r="$r" 'BEGIN { printf "%.3f", 0.02 + 0.8 * (r - 0.5) }')"
        how="at random"
    fi
    kill -9 $pid 2>/dev/null
    wait $pid 2>/dev/null
    if grep -q "^done in" "$DIR/log"; then  # it finished before the kill: check it, start over
        cmp -s "$K" "$DIR/ref.bin" || fail "a run that was not killed differs from the uninterrupted one"
        rm -f "$K" "$K".*; i=$((i - 1)); continue
    fi
    if grep -q "error: " "$DIR/log"; then cat "$DIR/log"; fail "kill $i: the run before the kill failed"; fi
    if [ ! -e "$K" ]; then  # before the first save: nothing to check, not counted
        echo "kill ($how): before the first save; no pair yet, not counted"
        i=$((i - 1)); continue
    fi
    # a copy of everything the kill left, resumed to the end, must equal the uninterrupted run
    rm -rf "$DIR/v" && mkdir "$DIR/v"
    left=$(cd "$DIR" && ls k.bin* | tr '\n' ' ')
    cp "$DIR"/k.bin* "$DIR/v/"
    ./train --resume "$DIR/v/k.bin" --quiet >"$DIR/v.log" 2>&1 || { cat "$DIR/v.log"; fail "kill $i ($how): the pair does not resume (files: $left)"; }
    cmp -s "$DIR/v/k.bin" "$DIR/ref.bin" || fail "kill $i ($how): the resumed model differs from the uninterrupted one"
    cmp -s "$DIR/v/k.bin.opt" "$DIR/ref.bin.opt" || fail "kill $i ($how): the resumed .opt differs from the uninterrupted one"
    stale=$(cd "$DIR/v" && ls | grep -e '\.tmp$' -e '\.next$' -e '\.lock$')
    [ -z "$stale" ] || fail "kill $i ($how): left behind after resuming: $stale"
    step=$(grep -o "resuming .* at step [0-9]*" "$DIR/v.log" | grep -o "[0-9]*$")
    echo "kill $i ($how): left $left-> resumed at step $step, equal to the uninterrupted run"
    pairs=$((pairs + 1))
done
rm -rf "$DIR"
echo "kill test: $KILLS kills, $pairs resumable pairs checked, all equal to the uninterrupted run"
