#!/usr/bin/env bash
# make gpu-check: the first command to run on a machine with a GPU. In order,
# into one log (out/gpu-check.log, or $GPU_CHECK_LOG):
#   1. a clean build with -j (all cores), warnings as errors; if only that
#      fails, the build is retried with WERROR=0 and the step reads FAIL;
#   2. nvidia-smi, the CUDA driver and runtime versions, the device's SMs and memory;
#   3. the GPU tests with STATEX_REQUIRE_GPU=1 (a GPU that cannot be used fails);
#   4. compute-sanitizer memcheck, racecheck, initcheck and synccheck on a short
#      subset of the GPU op tests (a tool the machine refuses is reported as such);
#   5. the GPU lines of `make bench`, one preset per process, 1.3b presets included
#      (last: drawing their random weights takes the host about a minute each).
# Every step has a time box (timeout); a failing step does not stop the next
# ones, except that nothing runs without a build or without a usable GPU. A
# summary closes the log. The whole run stays inside 8 minutes: a deadline
# ($GPU_CHECK_SECONDS, default 460) shrinks the later boxes. It never installs
# anything: missing headers stop it with a message saying how to bring them.
set -u
cd "$(dirname "$0")/.." || exit 1
LOG=${GPU_CHECK_LOG:-out/gpu-check.log}
TOTAL=${GPU_CHECK_SECONDS:-460}
JOBS=$(nproc 2>/dev/null || echo 4)
# the op tests under the sanitizers: the embedding, elementwise, norm, loss and
# AdamW ops and the small scans; not the matmul subcases (a name filter matches
# whole names, hence the *: cuBLAS is NVIDIA's, and loading it under a
# sanitizer takes long)
SAN_TESTS='gpu: ops (embedding*,gpu: ops (small scans*'
SAN_SKIP_SUBCASES='matmul*'
mkdir -p "$(dirname "$LOG")"

START=$SECONDS
SUMMARY=()
FAILED=0

# seconds left for a step whose own box is $1 (0: no time left)
box() {
    local left=$((TOTAL - (SECONDS - START) - 5))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# a summary line; anything but PASS, SKIP or REFUSED makes the check fail
note() {
    SUMMARY+=("$(printf '%-36s %-8s %4ss  %s' "$1" "$2" "$3" "${4:-}")")
    case "$2" in PASS | SKIP | REFUSED) ;; *) FAILED=1 ;; esac
}
header() { echo; echo "=== $* ($((SECONDS - START)) s in)"; }

# run NAME BOX CMD...: runs CMD in its time box, its output into the log; sets
# RC (125: no time left, 124 or 137: timed out), OUT (the output) and DT (seconds)
run() {
    local name=$1 b tmp
    b=$(box "$2"); shift 2
    header "$name: $*"
    OUT=""; DT=0; BOX=$b
    if [ "$b" = 0 ]; then echo "skipped: out of time"; RC=125; return; fi
    local t0=$SECONDS
    tmp=$(mktemp)
    timeout -k 5 "$b" "$@" 2>&1 | tee "$tmp"
    RC=${PIPESTATUS[0]}
    OUT=$(cat "$tmp")
    rm -f "$tmp"
    DT=$((SECONDS - t0))
}
# the summary line of the last run: PASS on exit 0
noted() {
    case "$RC" in
        0) note "$1" PASS "$DT" ;;
        125) note "$1" SKIP 0 "out of time" ;;
        124 | 137) echo "timed out after $BOX s"; note "$1" TIMEOUT "$DT" "its box was $BOX s" ;;
        *) note "$1" FAIL "$DT" "exit $RC${2:+; $2}" ;;
    esac
}

summary() {
    header "summary"
    printf '%s\n' "${SUMMARY[@]}"
    echo "total $((SECONDS - START)) s; log: $LOG"
    if [ "$FAILED" = 0 ]; then echo "gpu-check: PASS"; else echo "gpu-check: FAIL"; fi
}

main() {
    echo "gpu-check on $(hostname) at $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $JOBS cores, deadline $TOTAL s"
    echo "tree: $(git rev-parse --short HEAD 2>/dev/null || echo 'not a git checkout') $(git status --porcelain 2>/dev/null | grep -q . && echo '(with changes)')"
    uname -a

    # the header-only libraries (Debian's or vendor/), checked without apt
    header "headers"
    if ! make --no-print-directory NO_APT=1 deps; then
        echo
        echo "gpu-check: Eigen, stb or doctest headers are missing, and this machine cannot install them."
        echo "On a machine that has them (Debian: apt-get install libeigen3-dev libstb-dev doctest-dev),"
        echo "run 'make vendor-headers' in this tree, and bring the vendor/ folder along with it;"
        echo "or point EIGEN_INC, STB_INC, DOCTEST_INC at copies: make gpu-check EIGEN_INC=..."
        note headers FAIL 0 "missing; see above"
        summary
        return 1
    fi
    note headers PASS 0
    local nvcc
    nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
    if [ -z "$nvcc" ]; then
        echo "gpu-check: nvcc is neither on PATH nor in /usr/local/cuda/bin: put the CUDA toolkit's bin on PATH"
        note nvcc FAIL 0 "not found"
        summary
        return 1
    fi
    echo "nvcc: $nvcc"; "$nvcc" --version | tail -2; g++ --version | head -1

    # 1. a clean build
    make --no-print-directory clean > /dev/null
    run "1. build" 240 make --no-print-directory -j"$JOBS" NO_APT=1 all "$PWD/tests/run_tests"
    noted "1. build (-j$JOBS, warnings are errors)"
    if [ "$RC" != 0 ] && [ "$RC" != 124 ] && [ "$RC" != 137 ]; then
        run "1b. build again with WERROR=0" 240 make --no-print-directory -j"$JOBS" NO_APT=1 WERROR=0 all "$PWD/tests/run_tests"
        noted "1b. build again with WERROR=0"
    fi
    if [ ! -x tests/run_tests ] || [ ! -x train ] || [ ! -x infer ] || [ ! -e build/statex_cuda.o ]; then
        echo "gpu-check: no build with CUDA; nothing more to run"
        summary
        return 1
    fi

    # 2. the GPU, its driver and the CUDA runtime
    header "2. the GPU"
    if command -v nvidia-smi > /dev/null; then timeout -k 5 30 nvidia-smi; else echo "nvidia-smi: not found"; fi
    cat > build/gpu_versions.cu << 'EOF'
#include <cstdio>
#include <cuda_runtime.h>
int main() {
    int drv = 0, rt = 0, n = 0;
    cudaDriverGetVersion(&drv);
    cudaRuntimeGetVersion(&rt);
    printf("CUDA driver supports %d.%d, runtime (this build) %d.%d\n", drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) { printf("no usable CUDA device: %s\n", e != cudaSuccess ? cudaGetErrorString(e) : "none found"); return 1; }
    for (int i = 0; i < n; i++) {
        cudaDeviceProp p;
        cudaGetDeviceProperties(&p, i);
        printf("device %d: %s, compute capability %d.%d, %d SMs, %.1f GiB\n", i, p.name, p.major, p.minor, p.multiProcessorCount,
               p.totalGlobalMem / 1073741824.0);
    }
    return 0;
}
EOF
    run "2. GPU, driver, runtime" 60 bash -c "'$nvcc' -o build/gpu_versions build/gpu_versions.cu && ./build/gpu_versions"
    noted "2. GPU, driver, runtime"
    if [ "$RC" != 0 ]; then
        echo "gpu-check: no usable GPU (see above); the remaining steps need one"
        note "3-5. tests, sanitizer, bench" SKIP 0 "no usable GPU"
        FAILED=1
        summary
        return 1
    fi

    # 3. the GPU tests; a skip would be a failure
    run "3. GPU tests" 150 env STATEX_REQUIRE_GPU=1 ./tests/run_tests -tc="gpu:*"
    noted "3. GPU tests (STATEX_REQUIRE_GPU=1)" "$(grep '^tests:' <<< "$OUT" | tail -1)"

    # 4. compute-sanitizer on the short subset
    local san top
    top=$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p')
    san=$(command -v compute-sanitizer || ls "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" "$top/bin/compute-sanitizer" \
          "$(dirname "$(readlink -f "$nvcc")")/compute-sanitizer" /usr/local/cuda/bin/compute-sanitizer 2>/dev/null | head -1)
    if [ -z "$san" ]; then
        header "4. compute-sanitizer"
        echo "compute-sanitizer: not found (PATH, CUDA_HOME/bin, next to nvcc)"
        note "4. compute-sanitizer" FAIL 0 "not found"
    else
        for tool in memcheck racecheck initcheck synccheck; do
            run "4. sanitizer $tool" 60 env STATEX_REQUIRE_GPU=1 "$san" --tool "$tool" --error-exitcode 86 --print-limit 20 \
                ./tests/run_tests -tc="$SAN_TESTS" -sce="$SAN_SKIP_SUBCASES"
            if [ "$RC" = 86 ]; then
                note "4. sanitizer $tool" FAIL "$DT" "$(grep -o 'ERROR SUMMARY: [0-9]* errors*' <<< "$OUT" | tail -1)"
            elif [ "$RC" != 0 ] && [ "$RC" != 124 ] && [ "$RC" != 125 ] && [ "$RC" != 137 ] && ! grep -q "ERROR SUMMARY" <<< "$OUT"; then
                echo "compute-sanitizer --tool $tool could not run on this machine (it gave no ERROR SUMMARY; see above); going on"
                note "4. sanitizer $tool" REFUSED "$DT" "the machine refused the tool"
            else
                noted "4. sanitizer $tool" "the tests failed under the tool"
            fi
        done
    fi

    # 5. the GPU benchmark: training, one preset per process (so each peak is its
    # own), and generation; the 1.3b presets last (their random weights take the
    # host about a minute each to draw)
    for p in gla-small mamba2-small generate gla-1.3b mamba2-1.3b; do
        if [ "$p" = generate ]; then run "5. bench generate" 60 ./infer --bench --device cuda
        else run "5. bench train $p" 150 ./train --bench --device cuda --preset "$p"; fi
        if grep -q skipped <<< "$OUT"; then note "5. bench $p" FAIL "$DT" "skipped: no GPU"; else noted "5. bench $p"; fi
    done

    summary
    [ "$FAILED" = 0 ]
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
