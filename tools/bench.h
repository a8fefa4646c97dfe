// tools/bench.h: what the benchmarks measure of the machine itself, so that
// every figure can be printed beside the machine that produced it and compared
// with a limit measured in the same run (a GEMM rate, a read bandwidth).
#pragma once
#include "../model.h"
#include <omp.h>
#include <malloc.h>

// "CPU model (family F, model M), the ISA this binary was built for (compiler
// and flags), N threads". The family and model numbers name the CPU
// generation where the model name does not (a VM may report just "AMD EPYC");
// the flags, because the same code ran 17-27% apart on one CPU built two ways
// (the Makefile's note on -mtune).
inline std::string machine_line() {
    std::string name, family, number;
    FILE *f = fopen("/proc/cpuinfo", "r");  // (a proc file: its size reads as 0, so read it by lines)
    char line[512];
    auto take = [&](const char *key, std::string *out) {  // "key<blanks>: value"
        size_t n = strlen(key);
        const char *colon = strchr(line, ':');
        if (!colon || !out->empty() || strncmp(line, key, n) != 0 || strspn(line + n, " \t") != (size_t)(colon - line) - n) return;
        *out = colon[1] == ' ' ? colon + 2 : colon + 1;
        while (!out->empty() && (out->back() == '\n' || out->back() == ' ')) out->pop_back();
    };
    while (f && fgets(line, sizeof line, f) && line[0] != '\n') {  // the first processor's lines
        take("model name", &name);
        take("cpu family", &family);
        take("model", &number);
    }
    if (f) fclose(f);
    std::string model = name.empty() ? "unknown CPU" : name;
    if (!family.empty()) model += " (family " + family + ", model " + number + ")";
#if defined(__AVX512F__)
    const char *isa = "AVX-512";
#elif defined(__AVX2__)
    const char *isa = "AVX2";
#else
    const char *isa = "SSE";
#endif
#if defined(STATEX_OPT_FLAGS)
    const char *flags = STATEX_OPT_FLAGS;
#else
    const char *flags = "flags not recorded";
#endif
#if defined(__clang__)
    std::string compiler = strf("clang %d.%d", __clang_major__, __clang_minor__);
#elif defined(__GNUC__)
    std::string compiler = strf("g++ %d.%d", __GNUC__, __GNUC_MINOR__);
#else
    std::string compiler = "unknown compiler";
#endif
    return strf("%s, built for %s (%s, %s), %d threads", model.c_str(), isa, compiler.c_str(), flags, omp_get_max_threads());
}

// The median of some timings (the benchmarks time side by side and take medians)
inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The read bandwidth of this machine, in GB/s, over a buffer of `bytes` (the
// size of what a decode step reads: from cache when it fits, else memory), on
// `threads` threads: each thread sums its own slice again and again, for about
// `duration` seconds. It keeps 4 x 16 independent partial sums: with one vector of sums,
// each add waits for the one before and the loop measures that wait (10 to
// 25% less than the cache delivers, on the machine where this was found).
inline double read_bandwidth_gbs(size_t bytes, int threads, double duration) {
    size_t n = (std::max<size_t>(bytes, 1 << 16) / sizeof(float) + 63) & ~(size_t)63;
    float *buf = xcalloc_floats(n);
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i % 7);
    double seconds = 0;
    long passes = 0;
    float sink = 0;
    #pragma omp parallel num_threads(threads) reduction(+ : sink) reduction(max : seconds) reduction(+ : passes)
    {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        size_t lo = n / 64 * id / nt * 64, hi = n / 64 * (id + 1) / nt * 64;
        float acc[4][16] = {};
        double t0 = now_seconds(), t;
        long mine = 0;
        do {
            for (size_t i = lo; i < hi; i += 64)
                for (int k = 0; k < 4; k++)
                    for (int j = 0; j < 16; j++) acc[k][j] += buf[i + 16 * k + j];
            mine++;
            t = now_seconds() - t0;
        } while (t < duration);
        for (int k = 0; k < 4; k++)
            for (int j = 0; j < 16; j++) sink += acc[k][j];
        seconds = t;
        passes += mine;
    }
    free(buf);
    if (sink == 12345.0f) printf(" ");  // keep the sums alive
    return (double)passes / threads * n * sizeof(float) / seconds / 1e9;
}

// The peak resident memory of this process, in MB (VmHWM), and its reset
// (Linux's clear_refs), so that a benchmark of several models in one process
// gives each model its own peak rather than the largest so far.
inline double peak_rss_mb() {
    double mb = 0;
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0) mb = atof(line + 6) / 1024.0;  // (in kB)
    if (f) fclose(f);
    return mb;
}
inline void reset_peak_rss() {
    malloc_trim(0);  // first hand freed heap memory back, so the new peak starts from what is in use
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) { fputs("5", f); fclose(f); }
}
