// tools/bench.h: what the benchmarks measure of the machine itself, so that
// every figure can be printed beside the machine that produced it and compared
// with a limit measured in the same run (a GEMM rate, a read bandwidth).
#pragma once
#include "../model.h"
#include <omp.h>

// "CPU model, the ISA this binary was built for, N threads"
inline std::string machine_line() {
    std::string model = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");  // (a proc file: its size reads as 0, so read it by lines)
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        const char *colon = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && colon) {
            model = colon + 2;
            while (!model.empty() && (model.back() == '\n' || model.back() == ' ')) model.pop_back();
            break;
        }
    }
    if (f) fclose(f);
#if defined(__AVX512F__)
    const char *isa = "AVX-512";
#elif defined(__AVX2__)
    const char *isa = "AVX2";
#else
    const char *isa = "SSE";
#endif
    return strf("%s, built for %s, %d threads", model.c_str(), isa, omp_get_max_threads());
}

// The read bandwidth of this machine, in GB/s, over a buffer of `bytes` (the
// size of what a decode step reads: from cache when it fits, else memory), on
// `threads` threads: each thread sums its own slice again and again, with 16
// independent partial sums so the loads vectorise, for about 0.3 s.
inline double read_bandwidth_gbs(size_t bytes, int threads) {
    size_t n = (std::max<size_t>(bytes, 1 << 16) / sizeof(float) + 15) & ~(size_t)15;
    float *buf = xcalloc_floats(n);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 7);
    double seconds = 0;
    long passes = 0;
    float sink = 0;
    #pragma omp parallel num_threads(threads) reduction(+ : sink) reduction(max : seconds) reduction(+ : passes)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t lo = n / 16 * id / nt * 16, hi = n / 16 * (id + 1) / nt * 16;
        float acc[16] = {0};
        double t0 = now_seconds(), t;
        long mine = 0;
        do {
            for (size_t i = lo; i < hi; i += 16)
                for (int j = 0; j < 16; j++) acc[j] += buf[i + j];
            mine++;
            t = now_seconds() - t0;
        } while (t < 0.3);
        for (int j = 0; j < 16; j++) sink += acc[j];
        seconds = t;
        passes += mine;
    }
    free(buf);
    if (sink == 12345.0f) printf(" ");  // keep the sums alive
    return (double)passes / threads * n * sizeof(float) / seconds / 1e9;
}
