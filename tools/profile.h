// tools/profile.h: where a CPU training step spends its time (./train --bench
// --profile). The model passes take their ops from a table (model.h, struct
// Ops), so profiling needs no change to them: we hand them a copy of cpu::ops
// in which every op is wrapped in a timer.
#pragma once
#include "../model.h"
#include <map>
#include <omp.h>

struct OpProfile {
    std::map<std::string, double> seconds;  // per op name
    std::map<std::string, long> calls;
    double matmul_flops = 0;                // of all matmul calls, to give their rate
    struct Shape { double seconds = 0, flops = 0; long calls = 0; };
    std::map<std::string, Shape> matmul_shapes;  // the same per kind and shape, e.g. "backward 256 -> 768"
};
inline OpProfile &op_profile() {
    static OpProfile p;
    return p;
}
// Adds the time from its construction to its destruction to op `name`. In a
// decode step every thread runs every op inside one parallel region, and each
// op ends at a barrier: there only thread 0 records (one writer for the maps),
// and its time is the step's.
inline bool profile_records() { return omp_get_thread_num() == 0; }
struct OpTimer {
    const char *name;
    bool on;
    double t0;
    explicit OpTimer(const char *n) : name(n), on(profile_records()), t0(on ? now_seconds() : 0) {}
    ~OpTimer() {
        if (!on) return;
        op_profile().seconds[name] += now_seconds() - t0;
        op_profile().calls[name]++;
    }
};

// A matmul's timer: its op's time as OpTimer's, and its FLOPs and time under
// its shape too, "backward 256 -> 768" (input width -> output widths), as a
// product's rate depends on its shape (a rank-16 product is far from the GEMM's).
struct MatmulTimer {
    std::string shape;  // named before the clock starts (and only by the thread that records), so the op's time leaves it out
    OpTimer op;
    double flops;
    MatmulTimer(const char *name, const char *kind, int C, const int *OC, int n, double fl)
        : shape(profile_records() ? shape_name(kind, C, OC, n) : std::string()), op(name), flops(fl) {
        if (op.on) op_profile().matmul_flops += flops;
    }
    ~MatmulTimer() {
        if (!op.on) return;
        OpProfile::Shape &x = op_profile().matmul_shapes[shape];
        x.seconds += now_seconds() - op.t0;
        x.flops += flops;
        x.calls++;
    }
    static std::string shape_name(const char *kind, int C, const int *OC, int n) {
        std::string s = std::string(kind) + " " + std::to_string(C) + " ->";
        for (int i = 0; i < n; i++) s += (i ? "+" : " ") + std::to_string(OC[i]);
        return s;
    }
};

// cpu::ops with every entry timed. Each entry is a lambda without captures,
// so it converts to the table's function pointer; `auto... a` takes the op's
// own arguments, whatever they are.
inline Ops timed_cpu_ops() {
    Ops t = cpu::ops;
#define STATEX_TIMED(op) t.op = [](auto... a) { OpTimer timer(#op); return cpu::ops.op(a...); }
    STATEX_TIMED(zero); STATEX_TIMED(copy_states);
    STATEX_TIMED(encoder_forward); STATEX_TIMED(encoder_backward);
    STATEX_TIMED(rmsnorm_forward); STATEX_TIMED(rmsnorm_backward);
    STATEX_TIMED(residual_forward); STATEX_TIMED(swiglu_forward); STATEX_TIMED(swiglu_backward);
    STATEX_TIMED(gla_gate_forward); STATEX_TIMED(gla_gate_backward);
    STATEX_TIMED(gla_recurrent_forward); STATEX_TIMED(gla_recurrent_backward);
    STATEX_TIMED(gla_chunk_forward); STATEX_TIMED(gla_chunk_backward);
    STATEX_TIMED(head_norm_gate_forward); STATEX_TIMED(head_norm_gate_backward);
    STATEX_TIMED(conv1d_silu_forward); STATEX_TIMED(conv1d_silu_backward);
    STATEX_TIMED(dt_softplus_forward); STATEX_TIMED(dt_softplus_backward);
    STATEX_TIMED(ssd_recurrent_forward); STATEX_TIMED(ssd_recurrent_backward);
    STATEX_TIMED(ssd_chunk_forward); STATEX_TIMED(ssd_chunk_backward); STATEX_TIMED(ssd_decay_backward);
    STATEX_TIMED(gated_rmsnorm_forward); STATEX_TIMED(gated_rmsnorm_backward);
    STATEX_TIMED(crossentropy_forward); STATEX_TIMED(crossentropy_backward);
    STATEX_TIMED(adamw_update);
#undef STATEX_TIMED
    // the matmuls are timed the same way and also count their FLOPs (2 per
    // multiply-add), for their rate
    t.matmul_forward = [](float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC) {
        MatmulTimer timer("matmul_forward", "forward", C, &OC, 1, 2.0 * N * C * OC);
        cpu::ops.matmul_forward(out, inp, w, bias, N, C, OC);
    };
    t.matmul_group_forward = [](const MatmulGroup *g, const float *inp, int N, int C) {
        double flops = 0;
        for (int i = 0; i < g->n; i++) flops += 2.0 * N * C * g->OC[i];
        MatmulTimer timer("matmul_group_forward", "forward", C, g->OC, g->n, flops);
        cpu::ops.matmul_group_forward(g, inp, N, C);
    };
    t.matmul_backward = [](float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int N,
                           int C, int OC) {
        MatmulTimer timer("matmul_backward", "backward", C, &OC, 1, 2.0 * N * C * OC * ((dinp ? 1 : 0) + (dw ? 1 : 0)));
        cpu::ops.matmul_backward(dinp, dw, dbias, dout, inp, w, N, C, OC);
    };
    return t;
}

// Prints each op's share of `step_seconds` (the measured steps' total), the
// largest first, and what no op accounts for (the gradient norm, the glue);
// then the matmuls' own rate against `gemm_gflops`, the same-run GEMM rate:
// how far the step's rate is from the GEMM's because of the matmuls, and how
// far because of everything else (not for a decode step: gemm_gflops 0).
inline void print_op_profile(double step_seconds, double gemm_gflops) {
    std::vector<std::pair<double, std::string>> rows;
    double sum = 0;
    for (auto &kv : op_profile().seconds) { rows.push_back({kv.second, kv.first}); sum += kv.second; }
    std::sort(rows.rbegin(), rows.rend());
    printf("  %-26s %7s %8s\n", "op", "share", "calls");
    for (auto &r : rows)
        if (r.first / step_seconds >= 0.001)
            printf("  %-26s %6.1f%% %8ld\n", r.second.c_str(), 100 * r.first / step_seconds, op_profile().calls[r.second]);
    const char *rest = gemm_gflops > 0 ? "(gradient norm, the rest)" : "(outside the ops)";
    printf("  %-26s %6.1f%%\n", rest, 100 * (step_seconds - sum) / step_seconds);
    double mm_seconds = 0;
    for (const char *op : {"matmul_forward", "matmul_group_forward", "matmul_backward"})
        if (op_profile().seconds.count(op)) mm_seconds += op_profile().seconds[op];
    if (mm_seconds > 0 && gemm_gflops > 0) {
        double rate = op_profile().matmul_flops / mm_seconds / 1e9;
        printf("  the matmuls: %.1f GFLOP/s = %.0f%% of the GEMM rate, in %.1f%% of the step; every other op %.1f%%\n", rate,
               100 * rate / gemm_gflops, 100 * mm_seconds / step_seconds, 100 * (1 - mm_seconds / step_seconds));
        std::vector<std::pair<double, std::string>> shapes;
        for (auto &kv : op_profile().matmul_shapes) shapes.push_back({kv.second.seconds, kv.first});
        std::sort(shapes.rbegin(), shapes.rend());
        printf("  %-34s %7s %8s  %s\n", "matmul, input -> outputs", "share", "calls", "rate, share of the GEMM's");
        for (auto &r : shapes) {
            const OpProfile::Shape &x = op_profile().matmul_shapes[r.second];
            printf("  %-34s %6.1f%% %8ld  %5.0f%%\n", r.second.c_str(), 100 * x.seconds / step_seconds, x.calls,
                   100 * x.flops / x.seconds / 1e9 / gemm_gflops);
        }
    }
}
