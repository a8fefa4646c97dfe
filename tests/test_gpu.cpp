// The GPU path (statex.cu) against the CPU path (statex_cpu.cpp) and the
// reference data: every op forward and backward, the whole model, a training
// step, generation and the two forms of the token mixers. Without a usable GPU
// every case is skipped, and one line says why; with STATEX_REQUIRE_GPU=1 (make
// test-gpu, make gpu-check) every case fails instead, stating the reason, so a
// GPU that cannot be used never reads as a pass.
#include "test_util.h"
#include <omp.h>

static bool gpu_required() {
    const char *e = getenv("STATEX_REQUIRE_GPU");
    return e && strcmp(e, "1") == 0;
}
// gpu::available, asked once; the first time it says no, one line says why.
static std::string gpu_why;
static bool gpu_ok() {
    static int ok = -1;
    if (ok < 0) {
        ok = gpu::available(&gpu_why) ? 1 : 0;
        if (!ok && gpu_required()) printf("GPU tests required (STATEX_REQUIRE_GPU=1), but: %s\n", gpu_why.c_str());
        else if (!ok) printf("GPU tests skipped: %s\n", gpu_why.c_str());
    }
    return ok == 1;
}
// the decorator of every GPU case, and the first line of its body
static bool gpu_skip() { return !gpu_ok() && !gpu_required(); }
#define NEED_GPU() REQUIRE_MESSAGE(gpu_ok(), "STATEX_REQUIRE_GPU=1, but there is no usable GPU: " << gpu_why)

#ifndef STATEX_CUDA

TEST_CASE("gpu: skipped, this build has no CUDA" * doctest::skip(gpu_skip())) { NEED_GPU(); }

#else
#include <cuda_runtime.h>

// The ops are the two op tables of model.h, cpu::ops and gpu::ops.

// ----------------------------------------------------------------------------
// one array on both sides: host data for the CPU op, a device twin for the GPU op

static void cuda_ok(cudaError_t e) { REQUIRE_MESSAGE(e == cudaSuccess, std::string(cudaGetErrorString(e))); }

template <typename T> struct Both {
    std::vector<T> h;
    T *d = nullptr;
    T *cpu() { return h.data(); }
    T *gpu() { return d; }
    std::vector<T> back() const {  // what the GPU holds now
        std::vector<T> out(h.size());
        cuda_ok(cudaMemcpy(out.data(), d, h.size() * sizeof(T), cudaMemcpyDeviceToHost));
        return out;
    }
};
// Makes the arrays of one test and frees their device sides at the end.
struct Arrays {
    std::vector<void *> held;
    ~Arrays() { for (void *p : held) cudaFree(p); }
    template <typename T> Both<T> make(const std::vector<T> &init, size_t device_n = 0) {
        Both<T> a{init, nullptr};
        size_t n = std::max(init.size(), device_n);
        cuda_ok(cudaMalloc((void **)&a.d, std::max<size_t>(n, 1) * sizeof(T)));
        held.push_back(a.d);
        cuda_ok(cudaMemset(a.d, 0xff, n * sizeof(T)));  // NaN (floats) past init: reads of it show
        cuda_ok(cudaMemcpy(a.d, init.data(), init.size() * sizeof(T), cudaMemcpyHostToDevice));
        return a;
    }
    Both<float> normal(size_t n, Rng *r, float s = 1.0f) { return make(normal_vec(n, r, s)); }
    // an array an op writes all of: zeros on the CPU, NaN on the GPU, so an
    // element the GPU op never writes (or reads before writing) fails the check
    Both<float> output(size_t n) {
        Both<float> a = make(std::vector<float>(n, 0.0f));
        nan_fill(a.d, 0, n);
        return a;
    }
    static void nan_fill(float *d, size_t from, size_t n) { cuda_ok(cudaMemset(d + from, 0xff, n * sizeof(float))); }
    Both<float> uniform(size_t n, Rng *r, float lo, float hi) {
        std::vector<float> v(n);
        for (float &x : v) x = lo + (hi - lo) * rng_uniform(r);
        return make(v);
    }
    // the scans' scratch: per OpenMP thread on the CPU, per (sequence, head) block on the GPU
    // (NaN on the GPU: the kernels must write their work space before reading it)
    Both<float> scratch(size_t per_task, int gpu_tasks) {
        size_t host_n = per_task * omp_get_max_threads();
        Both<float> a = make(std::vector<float>(host_n, 0.0f), per_task * gpu_tasks);
        nan_fill(a.d, 0, std::max(host_n, per_task * gpu_tasks));
        return a;
    }
};

// the GPU side of `a` against its CPU side
static void check(const char *what, const Both<float> &a, double tol) {
    std::vector<float> g = a.back();
    double e = rel_err(g.data(), a.h.data(), a.h.size());
    CHECK_MESSAGE(e <= tol, std::string(what) << ": GPU vs CPU relative error " << e << " > " << tol);
}
const double TOL_ELEM = 1e-5, TOL_SCAN = 1e-4;  // elementwise and norms; matmuls and scans

// Runs a GPU op twice from the same device state and requires the same bits
// from both runs in every array it writes (`outs`, inputs updated in place
// included); the device keeps the second run's result. Ops whose sums use
// atomicAdd (the recurrent-form backward, for the tests only) pass exact =
// false: their runs need only agree to rounding.
template <typename Op>
static void gpu_twice(const char *what, Op op, std::initializer_list<Both<float> *> outs, bool exact = true) {
    std::vector<std::vector<float>> before, first;
    for (Both<float> *o : outs) before.push_back(o->back());
    op();
    for (Both<float> *o : outs) first.push_back(o->back());
    size_t i = 0;
    for (Both<float> *o : outs) {
        cuda_ok(cudaMemcpy(o->d, before[i].data(), before[i].size() * sizeof(float), cudaMemcpyHostToDevice));
        i++;
    }
    op();
    i = 0;
    for (Both<float> *o : outs) {
        std::vector<float> second = o->back();
        if (exact)
            CHECK_MESSAGE(memcmp(second.data(), first[i].data(), second.size() * sizeof(float)) == 0,
                          what << ": two GPU runs from the same start differ (output " << i << ")");
        else
            CHECK_MESSAGE(rel_err(second.data(), first[i].data(), second.size()) <= 1e-5,
                          what << ": two GPU runs from the same start differ beyond rounding (output " << i << ")");
        i++;
    }
}

// ----------------------------------------------------------------------------
// the ops, each forward and backward on small random inputs; backward outputs
// start non-zero, so whether an op adds to them or writes them is tested too

TEST_CASE("gpu: ops (embedding, norms, matmul, elementwise, loss, AdamW)" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    Rng r = {11};
    Arrays A;
    const int BT = 37, D = 70, OC = 45, V = 53;
    SUBCASE("embedding") {
        std::vector<int> tok(BT);
        for (int &t : tok) t = rng_int(&r, 9);  // repeats: rows shared by several tokens
        auto tokens = A.make(tok);
        auto embed = A.normal(9 * D, &r), out = A.output(BT * D), dout = A.normal(BT * D, &r), dembed = A.normal(9 * D, &r);
        cpu::ops.encoder_forward(out.cpu(), tokens.cpu(), embed.cpu(), BT, D);
        gpu_twice("encoder forward", [&] { gpu::ops.encoder_forward(out.gpu(), tokens.gpu(), embed.gpu(), BT, D); }, {&out});
        check("encoder forward", out, TOL_ELEM);
        cpu::ops.encoder_backward(dembed.cpu(), dout.cpu(), tokens.cpu(), BT, D);
        gpu_twice("encoder backward", [&] { gpu::ops.encoder_backward(dembed.gpu(), dout.gpu(), tokens.gpu(), BT, D); }, {&dembed});
        check("encoder backward", dembed, TOL_ELEM);
        // both add each row's tokens in token order, and nothing else: the same bits
        std::vector<float> g = dembed.back();
        CHECK_MESSAGE(memcmp(g.data(), dembed.h.data(), g.size() * sizeof(float)) == 0, "encoder backward: GPU and CPU bits differ");
    }
    SUBCASE("rmsnorm") {
        auto x = A.normal(BT * D, &r), w = A.normal(D, &r), out = A.output(BT * D), rstd = A.output(BT);
        auto dout = A.normal(BT * D, &r), dx = A.normal(BT * D, &r), dw = A.normal(D, &r);
        cpu::ops.rmsnorm_forward(out.cpu(), rstd.cpu(), x.cpu(), w.cpu(), BT, D);
        gpu_twice("rmsnorm forward", [&] { gpu::ops.rmsnorm_forward(out.gpu(), rstd.gpu(), x.gpu(), w.gpu(), BT, D); }, {&out, &rstd});
        check("rmsnorm out", out, TOL_ELEM);
        check("rmsnorm rstd", rstd, TOL_ELEM);
        cpu::ops.rmsnorm_backward(dx.cpu(), dw.cpu(), dout.cpu(), x.cpu(), w.cpu(), rstd.cpu(), BT, D);
        gpu_twice("rmsnorm backward", [&] { gpu::ops.rmsnorm_backward(dx.gpu(), dw.gpu(), dout.gpu(), x.gpu(), w.gpu(), rstd.gpu(), BT, D); },
                  {&dx, &dw});
        check("rmsnorm dx", dx, TOL_ELEM);
        check("rmsnorm dw", dw, TOL_ELEM);
    }
    SUBCASE("matmul") {
        auto x = A.normal(BT * D, &r), w = A.normal(OC * D, &r), bias = A.normal(OC, &r), out = A.output(BT * OC);
        auto dout = A.normal(BT * OC, &r), dx = A.normal(BT * D, &r), dw = A.normal(OC * D, &r), db = A.normal(OC, &r);
        cpu::ops.matmul_forward(out.cpu(), x.cpu(), w.cpu(), bias.cpu(), BT, D, OC);
        gpu_twice("matmul forward", [&] { gpu::ops.matmul_forward(out.gpu(), x.gpu(), w.gpu(), bias.gpu(), BT, D, OC); }, {&out});
        check("matmul out", out, TOL_SCAN);
        cpu::ops.matmul_backward(dx.cpu(), dw.cpu(), db.cpu(), dout.cpu(), x.cpu(), w.cpu(), BT, D, OC);
        gpu_twice("matmul backward", [&] { gpu::ops.matmul_backward(dx.gpu(), dw.gpu(), db.gpu(), dout.gpu(), x.gpu(), w.gpu(), BT, D, OC); },
                  {&dx, &dw, &db});
        check("matmul dinp", dx, TOL_SCAN);
        check("matmul dw", dw, TOL_SCAN);
        check("matmul dbias", db, TOL_SCAN);
    }
    SUBCASE("matmul group (two matmuls on one input)") {
        int OC2 = 2 * OC + 3;
        auto x = A.normal(BT * D, &r), w1 = A.normal(OC * D, &r), w2 = A.normal(OC2 * D, &r);
        auto o1 = A.output(BT * OC), o2 = A.output(BT * OC2);
        MatmulGroup on_cpu = {2, {o1.cpu(), o2.cpu()}, {w1.cpu(), w2.cpu()}, {OC, OC2}};
        MatmulGroup on_gpu = {2, {o1.gpu(), o2.gpu()}, {w1.gpu(), w2.gpu()}, {OC, OC2}};
        cpu::ops.matmul_group_forward(&on_cpu, x.cpu(), BT, D);
        gpu_twice("matmul group forward", [&] { gpu::ops.matmul_group_forward(&on_gpu, x.gpu(), BT, D); }, {&o1, &o2});
        check("matmul group out 0", o1, TOL_SCAN);
        check("matmul group out 1", o2, TOL_SCAN);
    }
    SUBCASE("residual, SwiGLU, GLA gate") {
        size_t n = BT * D;
        auto a = A.normal(n, &r), b = A.normal(n, &r, 3.0f), out = A.output(n), dh = A.normal(n, &r);
        auto dg = A.normal(n, &r), du = A.normal(n, &r), h = A.output(n);
        cpu::ops.residual_forward(out.cpu(), a.cpu(), b.cpu(), n);
        gpu_twice("residual", [&] { gpu::ops.residual_forward(out.gpu(), a.gpu(), b.gpu(), n); }, {&out});
        check("residual", out, TOL_ELEM);
        cpu::ops.swiglu_forward(h.cpu(), a.cpu(), b.cpu(), n);
        gpu_twice("swiglu forward", [&] { gpu::ops.swiglu_forward(h.gpu(), a.gpu(), b.gpu(), n); }, {&h});
        check("swiglu out", h, TOL_ELEM);
        cpu::ops.swiglu_backward(dg.cpu(), du.cpu(), dh.cpu(), a.cpu(), b.cpu(), n);
        gpu_twice("swiglu backward", [&] { gpu::ops.swiglu_backward(dg.gpu(), du.gpu(), dh.gpu(), a.gpu(), b.gpu(), n); }, {&dg, &du});
        check("swiglu dg", dg, TOL_ELEM);
        check("swiglu du", du, TOL_ELEM);
        cpu::ops.gla_gate_forward(out.cpu(), b.cpu(), n);
        gpu_twice("gla gate forward", [&] { gpu::ops.gla_gate_forward(out.gpu(), b.gpu(), n); }, {&out});
        check("gla gate out", out, TOL_ELEM);
        cpu::ops.gla_gate_backward(dg.cpu(), dh.cpu(), b.cpu(), n);
        gpu_twice("gla gate backward", [&] { gpu::ops.gla_gate_backward(dg.gpu(), dh.gpu(), b.gpu(), n); }, {&dg});
        check("gla gate dx", dg, TOL_ELEM);
    }
    SUBCASE("head norm and gate") {
        const int H = 3, dv = 40;
        size_t n = (size_t)BT * H * dv;
        auto o = A.normal(n, &r), og = A.normal(n, &r), w = A.normal(dv, &r), out = A.output(n), rstd = A.output(BT * H);
        auto dout = A.normal(n, &r), d_o = A.normal(n, &r), dog = A.normal(n, &r), dw = A.normal(dv, &r);
        cpu::ops.head_norm_gate_forward(out.cpu(), rstd.cpu(), o.cpu(), og.cpu(), w.cpu(), BT, H, dv);
        gpu_twice("head_norm_gate forward", [&] { gpu::ops.head_norm_gate_forward(out.gpu(), rstd.gpu(), o.gpu(), og.gpu(), w.gpu(), BT, H, dv); },
                  {&out, &rstd});
        check("head_norm_gate out", out, TOL_ELEM);
        cpu::ops.head_norm_gate_backward(d_o.cpu(), dog.cpu(), dw.cpu(), dout.cpu(), o.cpu(), og.cpu(), w.cpu(), rstd.cpu(), BT, H, dv);
        gpu_twice("head_norm_gate backward", [&] {
            gpu::ops.head_norm_gate_backward(d_o.gpu(), dog.gpu(), dw.gpu(), dout.gpu(), o.gpu(), og.gpu(), w.gpu(), rstd.gpu(), BT, H, dv);
        }, {&d_o, &dog, &dw});
        check("head_norm_gate do", d_o, TOL_ELEM);
        check("head_norm_gate dog", dog, TOL_ELEM);
        check("head_norm_gate dw", dw, TOL_ELEM);
    }
    SUBCASE("conv1d + SiLU, with and without a carried window") {
        const int B = 2, T = 19, Cc = 35, W = 4, stride = 50;  // rows of `in` are slices of wider rows
        auto in = A.normal(B * T * stride, &r), w = A.normal(Cc * W, &r, 0.5f), bias = A.normal(Cc, &r, 0.1f);
        auto out = A.output(B * T * Cc), pre = A.output(B * T * Cc), state = A.normal(B * (W - 1) * Cc, &r);
        cpu::ops.conv1d_silu_forward(out.cpu(), pre.cpu(), in.cpu(), stride, w.cpu(), bias.cpu(), nullptr, B, T, Cc, W);
        gpu_twice("conv forward", [&] {
            gpu::ops.conv1d_silu_forward(out.gpu(), pre.gpu(), in.gpu(), stride, w.gpu(), bias.gpu(), nullptr, B, T, Cc, W);
        }, {&out, &pre});
        check("conv out", out, TOL_ELEM);
        check("conv pre", pre, TOL_ELEM);
        auto dout = A.normal(B * T * Cc, &r), din = A.normal(B * T * stride, &r), dw = A.normal(Cc * W, &r), db = A.normal(Cc, &r);
        cpu::ops.conv1d_silu_backward(din.cpu(), stride, dw.cpu(), db.cpu(), dout.cpu(), pre.cpu(), in.cpu(), stride, w.cpu(), B, T, Cc, W);
        gpu_twice("conv backward", [&] {
            gpu::ops.conv1d_silu_backward(din.gpu(), stride, dw.gpu(), db.gpu(), dout.gpu(), pre.gpu(), in.gpu(), stride, w.gpu(), B, T, Cc, W);
        }, {&din, &dw, &db});
        check("conv din", din, TOL_ELEM);
        check("conv dw", dw, TOL_ELEM);
        check("conv dbias", db, TOL_ELEM);
        for (int Tc : {1, 2, 7}) {  // shorter than the window, and longer
            cpu::ops.conv1d_silu_forward(out.cpu(), pre.cpu(), in.cpu(), stride, w.cpu(), bias.cpu(), state.cpu(), B, Tc, Cc, W);
            gpu_twice("conv forward with a window", [&] {
                gpu::ops.conv1d_silu_forward(out.gpu(), pre.gpu(), in.gpu(), stride, w.gpu(), bias.gpu(), state.gpu(), B, Tc, Cc, W);
            }, {&out, &pre, &state});
            check("conv out with a window", out, TOL_ELEM);
            check("conv window after", state, TOL_ELEM);
        }
    }
    SUBCASE("dt softplus, gated rmsnorm, SSD decay") {
        const int nh = 5, stride = 12, E = 44, zs = 60, P = 4, N = 6, Cc = nh * P + 2 * N;
        auto raw = A.normal(BT * stride, &r), bias = A.normal(nh, &r), dt = A.output(BT * nh);
        auto ddt = A.normal(BT * nh, &r), draw = A.normal(BT * stride, &r), dbias = A.normal(nh, &r);
        cpu::ops.dt_softplus_forward(dt.cpu(), raw.cpu(), stride, bias.cpu(), BT, nh);
        gpu_twice("dt softplus forward", [&] { gpu::ops.dt_softplus_forward(dt.gpu(), raw.gpu(), stride, bias.gpu(), BT, nh); }, {&dt});
        check("dt softplus", dt, TOL_ELEM);
        cpu::ops.dt_softplus_backward(draw.cpu(), stride, dbias.cpu(), ddt.cpu(), raw.cpu(), stride, bias.cpu(), BT, nh);
        gpu_twice("dt softplus backward", [&] {
            gpu::ops.dt_softplus_backward(draw.gpu(), stride, dbias.gpu(), ddt.gpu(), raw.gpu(), stride, bias.gpu(), BT, nh);
        }, {&draw, &dbias});
        check("dt softplus draw", draw, TOL_ELEM);
        check("dt softplus dbias", dbias, TOL_ELEM);
        auto y = A.normal(BT * E, &r), z = A.normal(BT * zs, &r), w = A.normal(E, &r), out = A.output(BT * E), rstd = A.output(BT);
        auto dout = A.normal(BT * E, &r), dy = A.normal(BT * E, &r), dz = A.normal(BT * zs, &r), dw = A.normal(E, &r);
        auto work = A.output(BT * E);
        cpu::ops.gated_rmsnorm_forward(out.cpu(), rstd.cpu(), y.cpu(), z.cpu(), zs, w.cpu(), BT, E);
        gpu_twice("gated rmsnorm forward", [&] { gpu::ops.gated_rmsnorm_forward(out.gpu(), rstd.gpu(), y.gpu(), z.gpu(), zs, w.gpu(), BT, E); },
                  {&out, &rstd});
        check("gated rmsnorm out", out, TOL_ELEM);
        cpu::ops.gated_rmsnorm_backward(dy.cpu(), dz.cpu(), zs, dw.cpu(), dout.cpu(), y.cpu(), z.cpu(), zs, w.cpu(), rstd.cpu(), BT, E, work.cpu());
        gpu_twice("gated rmsnorm backward", [&] {
            gpu::ops.gated_rmsnorm_backward(dy.gpu(), dz.gpu(), zs, dw.gpu(), dout.gpu(), y.gpu(), z.gpu(), zs, w.gpu(), rstd.gpu(), BT, E, work.gpu());
        }, {&dy, &dz, &dw});
        check("gated rmsnorm dy", dy, TOL_ELEM);
        check("gated rmsnorm dz", dz, TOL_ELEM);
        check("gated rmsnorm dw", dw, TOL_ELEM);
        auto dlda = A.normal(BT * nh, &r), sdy = A.normal(BT * nh * P, &r), xbc = A.normal(BT * Cc, &r);
        auto A_log = A.uniform(nh, &r, 0.0f, 2.7f), dA = A.normal(nh, &r), dD = A.normal(nh, &r);
        cpu::ops.ssd_decay_backward(ddt.cpu(), dA.cpu(), dD.cpu(), dlda.cpu(), sdy.cpu(), xbc.cpu(), dt.cpu(), A_log.cpu(), BT, nh, P, N);
        gpu_twice("ssd decay backward", [&] {
            gpu::ops.ssd_decay_backward(ddt.gpu(), dA.gpu(), dD.gpu(), dlda.gpu(), sdy.gpu(), xbc.gpu(), dt.gpu(), A_log.gpu(), BT, nh, P, N);
        }, {&ddt, &dA, &dD});
        check("ssd decay ddt", ddt, TOL_ELEM);
        check("ssd decay dA_log", dA, TOL_ELEM);
        check("ssd decay dD", dD, TOL_ELEM);
    }
    SUBCASE("cross-entropy") {
        std::vector<int> tg(BT);
        for (int i = 0; i < BT; i++) tg[i] = i % 7 == 3 ? -1 : rng_int(&r, V);
        auto targets = A.make(tg);
        auto logits = A.normal(BT * V, &r, 2.0f), losses = A.output(BT), dlogits = A.normal(BT * V, &r);
        int n_cpu = 0, n_gpu = 0;
        float l_cpu = cpu::ops.crossentropy_forward(losses.cpu(), &n_cpu, logits.cpu(), targets.cpu(), BT, V), l_gpu = 0;
        gpu_twice("cross-entropy forward", [&] { l_gpu = gpu::ops.crossentropy_forward(losses.gpu(), &n_gpu, logits.gpu(), targets.gpu(), BT, V); },
                  {&losses});
        CHECK(n_gpu == n_cpu);
        CHECK(fabs(l_gpu - l_cpu) <= TOL_ELEM * fabs(l_cpu));
        check("cross-entropy losses", losses, TOL_ELEM);
        cpu::ops.crossentropy_backward(dlogits.cpu(), logits.cpu(), targets.cpu(), BT, V, 1.0f / n_cpu);
        gpu_twice("cross-entropy backward", [&] { gpu::ops.crossentropy_backward(dlogits.gpu(), logits.gpu(), targets.gpu(), BT, V, 1.0f / n_cpu); },
                  {&dlogits});
        check("cross-entropy dlogits", dlogits, TOL_ELEM);
    }
    SUBCASE("AdamW") {
        size_t n = 1000;
        auto p = A.normal(n, &r), g = A.normal(n, &r), m = A.normal(n, &r, 0.1f), v = A.uniform(n, &r, 0.0f, 0.1f);
        AdamWConfig opt;
        for (int step = 1; step <= 3; step++) {
            cpu::ops.adamw_update(p.cpu(), g.cpu(), m.cpu(), v.cpu(), n, 1e-2f, 0.5f, 0.1f, step, &opt);
            gpu_twice("adamw", [&] { gpu::ops.adamw_update(p.gpu(), g.gpu(), m.gpu(), v.gpu(), n, 1e-2f, 0.5f, 0.1f, step, &opt); }, {&p, &m, &v});
        }
        check("adamw params", p, TOL_ELEM);
        check("adamw m", m, TOL_ELEM);
        check("adamw v", v, TOL_ELEM);
    }
}

// GLA scans, recurrent and chunked, from a non-zero initial state (forward) and
// into gradients that start non-zero (backward)
static void check_gla_scans(int B, int T, int H, int hk, int hv, uint64_t seed) {
    INFO("GLA scans B " << B << " T " << T << " H " << H << " hk " << hk << " hv " << hv);
    Rng r = {seed};
    Arrays A;
    int K = H * hk, V = H * hv, ns = gla_state_slots(T);
    size_t BT = (size_t)B * T, X = (size_t)hk * hv;
    Config c = {};
    c.family = FAMILY_GLA; c.n_layer = 1; c.key_dim = K; c.value_dim = V; c.n_head[0] = H;
    size_t spt = (cpu::scan_work_floats(&c) + 15) & ~(size_t)15;
    auto q = A.normal(BT * K, &r), k = A.normal(BT * K, &r), v = A.normal(BT * V, &r), a = A.uniform(BT * K, &r, -0.6f, 0.0f);
    auto dout = A.normal(BT * V, &r), scratch = A.scratch(spt, B * H);
    // recurrent
    auto o = A.output(BT * V), S = A.normal(B * H * X, &r, 0.3f), S_all = A.output(BT * H * X);
    cpu::ops.gla_recurrent_forward(o.cpu(), S.cpu(), S_all.cpu(), q.cpu(), k.cpu(), v.cpu(), a.cpu(), B, T, H, K, V);
    gpu_twice("gla recurrent forward", [&] {
        gpu::ops.gla_recurrent_forward(o.gpu(), S.gpu(), S_all.gpu(), q.gpu(), k.gpu(), v.gpu(), a.gpu(), B, T, H, K, V);
    }, {&o, &S, &S_all});
    check("gla recurrent o", o, TOL_SCAN);
    check("gla recurrent final state", S, TOL_SCAN);
    check("gla recurrent S_all", S_all, TOL_SCAN);
    auto dq = A.normal(BT * K, &r), dk = A.normal(BT * K, &r), dv = A.normal(BT * V, &r), da = A.normal(BT * K, &r);
    cpu::ops.gla_recurrent_backward(dq.cpu(), dk.cpu(), dv.cpu(), da.cpu(), dout.cpu(), S_all.cpu(), q.cpu(), k.cpu(), v.cpu(), a.cpu(),
                                B, T, H, K, V, scratch.cpu(), spt);
    gpu_twice("gla recurrent backward", [&] {
        gpu::ops.gla_recurrent_backward(dq.gpu(), dk.gpu(), dv.gpu(), da.gpu(), dout.gpu(), S_all.gpu(), q.gpu(), k.gpu(), v.gpu(), a.gpu(),
                                    B, T, H, K, V, scratch.gpu(), spt);
    }, {&dq, &dk, &dv, &da}, false);  // atomics: see statex.cu
    check("gla recurrent dq", dq, TOL_SCAN);
    check("gla recurrent dk", dk, TOL_SCAN);
    check("gla recurrent dv", dv, TOL_SCAN);
    check("gla recurrent da", da, TOL_SCAN);
    // chunked: slot 0 of every (b, h) is the initial state, the other kept slots outputs
    std::vector<float> S0((size_t)B * H * ns * X, 0.0f);
    for (int i = 0; i < B * H; i++)
        for (size_t x = 0; x < X; x++) S0[(size_t)i * ns * X + x] = 0.3f * rng_normal(&r);
    auto Sc = A.make(S0);
    for (int i = 0; i < B * H; i++) Arrays::nan_fill(Sc.d, ((size_t)i * ns + 1) * X, (ns - 1) * X);
    Arrays::nan_fill(o.d, 0, o.h.size());  // written again by the chunked form
    cpu::ops.gla_chunk_forward(o.cpu(), Sc.cpu(), q.cpu(), k.cpu(), v.cpu(), a.cpu(), B, T, H, K, V, scratch.cpu(), spt);
    gpu_twice("gla chunk forward", [&] {
        gpu::ops.gla_chunk_forward(o.gpu(), Sc.gpu(), q.gpu(), k.gpu(), v.gpu(), a.gpu(), B, T, H, K, V, scratch.gpu(), spt);
    }, {&o, &Sc});
    check("gla chunked o", o, TOL_SCAN);
    check("gla chunk states", Sc, TOL_SCAN);
    cpu::ops.gla_chunk_backward(dq.cpu(), dk.cpu(), dv.cpu(), da.cpu(), dout.cpu(), Sc.cpu(), q.cpu(), k.cpu(), v.cpu(), a.cpu(),
                            B, T, H, K, V, scratch.cpu(), spt);
    gpu_twice("gla chunk backward", [&] {
        gpu::ops.gla_chunk_backward(dq.gpu(), dk.gpu(), dv.gpu(), da.gpu(), dout.gpu(), Sc.gpu(), q.gpu(), k.gpu(), v.gpu(), a.gpu(),
                                B, T, H, K, V, scratch.gpu(), spt);
    }, {&dq, &dk, &dv, &da});
    check("gla chunked dq", dq, TOL_SCAN);
    check("gla chunked dk", dk, TOL_SCAN);
    check("gla chunked dv", dv, TOL_SCAN);
    check("gla chunked da", da, TOL_SCAN);
}

TEST_CASE("gpu: ops (GLA scans)" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    check_gla_scans(2, 37, 2, 40, 300, 1);  // hk, hv past one tile, hv past one pass of the threads
    check_gla_scans(1, 5, 3, 8, 16, 2);     // shorter than a chunk
    check_gla_scans(2, 32, 1, 32, 33, 3);   // whole chunks
    check_gla_scans(1, 20, 1, 130, 520, 4); // a merged head: several key tiles, several passes over the values
    check_gla_scans(1, 37, 1, 256, 256, 5); // a StateX-merged head at K = V = 256 (one head)
    check_gla_scans(34, 20, 4, 8, 16, 6);   // 136 blocks: more than an H200 has SMs (132)
    check_gla_scans(2, 130, 2, 40, 48, 8);  // three groups of kept states (GLA_STATE_EVERY), the last one short
    check_gla_scans(1, 128, 1, 8, 300, 9);  // whole groups; hv past one pass of the threads
}

// Mamba2 SSD scans, recurrent and chunked, likewise
static void check_ssd_scans(int B, int T, int nh, int P, int N, uint64_t seed) {
    INFO("SSD scans B " << B << " T " << T << " nh " << nh << " P " << P << " N " << N);
    Rng r = {seed};
    Arrays A;
    int E = nh * P, Cc = E + 2 * N, nc = n_chunks(T, ssd_chunk_len(N));
    size_t BT = (size_t)B * T, X = (size_t)P * N;
    Config c = {};
    c.family = FAMILY_MAMBA2; c.n_layer = 1; c.d_inner = E; c.headdim = P; c.d_conv = 4; c.d_state[0] = N;
    size_t spt = (cpu::scan_work_floats(&c) + 15) & ~(size_t)15;
    std::vector<float> dtv(BT * nh), alog(nh);
    for (float &x : dtv) x = expf(logf(0.01f) + rng_uniform(&r) * (logf(0.5f) - logf(0.01f)));
    for (float &x : alog) x = logf(1.0f + 15.0f * rng_uniform(&r));
    auto xbc = A.normal(BT * Cc, &r), dt = A.make(dtv), A_log = A.make(alog), Dskip = A.uniform(nh, &r, 0.5f, 1.5f);
    auto dy = A.normal(BT * E, &r), scratch = A.scratch(spt, B * nh);
    // recurrent
    auto y = A.output(BT * E), hs = A.normal(B * nh * X, &r, 0.3f), h_all = A.output(BT * nh * X);
    cpu::ops.ssd_recurrent_forward(y.cpu(), hs.cpu(), h_all.cpu(), xbc.cpu(), dt.cpu(), A_log.cpu(), Dskip.cpu(), B, T, nh, P, N);
    gpu_twice("ssd recurrent forward", [&] {
        gpu::ops.ssd_recurrent_forward(y.gpu(), hs.gpu(), h_all.gpu(), xbc.gpu(), dt.gpu(), A_log.gpu(), Dskip.gpu(), B, T, nh, P, N);
    }, {&y, &hs, &h_all});
    check("ssd recurrent y", y, TOL_SCAN);
    check("ssd recurrent final state", hs, TOL_SCAN);
    check("ssd recurrent h_all", h_all, TOL_SCAN);
    auto dxbc = A.normal(BT * Cc, &r), ddt = A.normal(BT * nh, &r), dlda = A.normal(BT * nh, &r);
    cpu::ops.ssd_recurrent_backward(dxbc.cpu(), ddt.cpu(), dlda.cpu(), dy.cpu(), h_all.cpu(), xbc.cpu(), dt.cpu(), A_log.cpu(), Dskip.cpu(),
                                B, T, nh, P, N, scratch.cpu(), spt);
    gpu_twice("ssd recurrent backward", [&] {
        gpu::ops.ssd_recurrent_backward(dxbc.gpu(), ddt.gpu(), dlda.gpu(), dy.gpu(), h_all.gpu(), xbc.gpu(), dt.gpu(), A_log.gpu(), Dskip.gpu(),
                                    B, T, nh, P, N, scratch.gpu(), spt);
    }, {&dxbc, &ddt, &dlda}, false);  // atomics: see statex.cu
    check("ssd recurrent dxbc", dxbc, TOL_SCAN);
    check("ssd recurrent ddt", ddt, TOL_SCAN);
    check("ssd recurrent dlda", dlda, TOL_SCAN);
    // chunked
    std::vector<float> H0((size_t)B * nh * (nc + 1) * X, 0.0f);
    for (int i = 0; i < B * nh; i++)
        for (size_t x = 0; x < X; x++) H0[(size_t)i * (nc + 1) * X + x] = 0.3f * rng_normal(&r);
    auto hc = A.make(H0);
    for (int i = 0; i < B * nh; i++) Arrays::nan_fill(hc.d, ((size_t)i * (nc + 1) + 1) * X, nc * X);
    Arrays::nan_fill(y.d, 0, y.h.size());  // written again by the chunked form
    cpu::ops.ssd_chunk_forward(y.cpu(), hc.cpu(), xbc.cpu(), dt.cpu(), A_log.cpu(), Dskip.cpu(), B, T, nh, P, N, scratch.cpu(), spt);
    gpu_twice("ssd chunk forward", [&] {
        gpu::ops.ssd_chunk_forward(y.gpu(), hc.gpu(), xbc.gpu(), dt.gpu(), A_log.gpu(), Dskip.gpu(), B, T, nh, P, N, scratch.gpu(), spt);
    }, {&y, &hc});
    check("ssd chunked y", y, TOL_SCAN);
    check("ssd chunk states", hc, TOL_SCAN);
    cpu::ops.ssd_chunk_backward(dxbc.cpu(), ddt.cpu(), dlda.cpu(), dy.cpu(), hc.cpu(), xbc.cpu(), dt.cpu(), A_log.cpu(), Dskip.cpu(),
                            B, T, nh, P, N, scratch.cpu(), spt);
    gpu_twice("ssd chunk backward", [&] {
        gpu::ops.ssd_chunk_backward(dxbc.gpu(), ddt.gpu(), dlda.gpu(), dy.gpu(), hc.gpu(), xbc.gpu(), dt.gpu(), A_log.gpu(), Dskip.gpu(),
                                B, T, nh, P, N, scratch.gpu(), spt);
    }, {&dxbc, &ddt, &dlda});
    check("ssd chunked dxbc", dxbc, TOL_SCAN);
    check("ssd chunked ddt", ddt, TOL_SCAN);
    check("ssd chunked dlda", dlda, TOL_SCAN);
}

TEST_CASE("gpu: ops (Mamba2 SSD scans)" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    check_ssd_scans(2, 70, 3, 20, 40, 1);   // two chunks of 64, the last short
    check_ssd_scans(1, 130, 2, 70, 17, 2);  // P past one 64-channel tile
    check_ssd_scans(2, 5, 1, 8, 3, 3);      // shorter than a chunk
    check_ssd_scans(1, 70, 1, 130, 100, 4); // three channel tiles, N past the warp width
    check_ssd_scans(2, 70, 70, 4, 8, 5);    // 140 blocks: more than an H200 has SMs (132); 70 heads share B, C;
                                            // N <= 16: three chunks of 32 (ssd_chunk_len), the last short
    check_ssd_scans(1, 70, 2, 70, 12, 6);   // chunks of 32 with P past one 64-channel tile
}

// The short subset that make gpu-check runs under compute-sanitizer (each tool
// slows the kernels a lot): both scan families, every kernel, tiny shapes.
TEST_CASE("gpu: ops (small scans, the compute-sanitizer subset)" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    check_gla_scans(2, 20, 2, 40, 16, 7);   // two chunks, the last short; two key tiles
    check_ssd_scans(2, 70, 3, 8, 5, 8);     // three chunks of 32, the last short; three heads share B, C
}

// ----------------------------------------------------------------------------
// whole models

static Config small_gla(std::vector<int> heads) {
    Config c = {};
    c.family = FAMILY_GLA; c.vocab_size = 256; c.d_model = 48; c.n_layer = (int)heads.size(); c.tied = 0;
    c.key_dim = 32; c.value_dim = 64; c.gate_rank = 8; c.mlp_hidden = 96;
    for (size_t l = 0; l < heads.size(); l++) c.n_head[l] = heads[l];
    return c;
}
static Config small_mamba2(std::vector<int> states) {
    Config c = {};
    c.family = FAMILY_MAMBA2; c.vocab_size = 256; c.d_model = 48; c.n_layer = (int)states.size(); c.tied = 1;
    c.d_inner = 96; c.headdim = 16; c.d_conv = 4;
    for (size_t l = 0; l < states.size(); l++) c.d_state[l] = states[l];
    return c;
}

// Weights that keep every activation O(1) (the recipe of tests/refdata/README.md;
// the training initialisation, std 0.02, would make them tiny). A malloc'ed buffer.
static float *test_params(const Config *c, uint64_t seed) {
    Rng r = {seed};
    size_t n = num_params_of(c);
    float *p = (float *)xmalloc(n * sizeof(float));
    auto ends = [](const std::string &s, const char *e) { size_t k = strlen(e); return s.size() >= k && s.compare(s.size() - k, k, e) == 0; };
    for (const ParamTensor &t : param_layout(c)) {
        float *x = p + t.offset;
        const std::string &s = t.name;
        for (size_t i = 0; i < t.size(); i++) {
            float z = rng_normal(&r), u = rng_uniform(&r), fan_in = (float)t.cols;
            if (s.find("norm") != std::string::npos) x[i] = 1.0f + 0.2f * z;
            else if (ends(s, "o_proj.weight") || ends(s, "down_proj.weight") || ends(s, "out_proj.weight")) x[i] = z * 0.5f / sqrtf(fan_in);
            else if (ends(s, "gk_proj1.weight")) x[i] = z * 2.0f / sqrtf(fan_in);
            else if (ends(s, "gk_proj1.bias")) x[i] = 2.0f * z;
            else if (ends(s, "conv1d.weight")) x[i] = z / sqrtf((float)c->d_conv);
            else if (ends(s, "conv1d.bias")) x[i] = 0.1f * z;
            else if (ends(s, "mixer.D")) x[i] = 1.0f + 0.3f * z;
            else if (ends(s, "A_log")) x[i] = logf(1.0f + 15.0f * u);
            else if (ends(s, "dt_bias")) {
                float dt = expf(logf(0.01f) + u * (logf(0.5f) - logf(0.01f)));
                x[i] = dt + logf(-expm1f(-dt));  // softplus^-1
            } else if (ends(s, "embed.weight")) x[i] = 0.25f * z;
            else if (ends(s, "lm_head.weight")) x[i] = z * 2.0f / sqrtf((float)c->d_model);
            else x[i] = z / sqrtf(fan_in);  // input-side projections
        }
    }
    return p;
}

// B*T random bytes, and their targets (the next byte, a few set to -1)
static void random_batch(int B, int T, uint64_t seed, std::vector<int> *inputs, std::vector<int> *targets) {
    Rng r = {seed};
    inputs->resize((size_t)B * T);
    targets->resize((size_t)B * T);
    for (int &x : *inputs) x = rng_int(&r, 256);
    for (size_t i = 0; i < inputs->size(); i++) (*targets)[i] = i % 11 == 5 ? -1 : rng_int(&r, 256);
    (*targets)[0] = rng_int(&r, 256);  // at least one target counts
}

// one forward and backward on the GPU: logits, loss, gradients
struct Pass {
    std::vector<float> logits, grads;
    float loss;
};
static Pass gpu_pass(Model *m, const std::vector<int> &in, const std::vector<int> &tg, int B, int T) {
    Pass p;
    gpu::model_forward(m, in.data(), tg.data(), B, T);
    gpu::model_zero_grad(m);
    gpu::model_backward(m);
    p.logits.resize((size_t)B * T * m->config.vocab_size);
    p.grads.resize(m->num_params);
    gpu::logits_to_host(m, p.logits.data());
    gpu::grads_to_host(m, p.grads.data());
    p.loss = m->loss;
    return p;
}

// logits, loss and every gradient tensor of `got` against `want`, with the
// thresholds of tests/test_refdata.cpp; `skip` names tensors left out
static void check_pass(const char *what, const Model *m, const Pass &got, const float *want_logits, float want_loss,
                       const float *want_grads, const std::vector<std::string> &skip = {}) {
    double e_logits = rel_err(got.logits.data(), want_logits, got.logits.size());
    double e_loss = fabs((double)got.loss - want_loss) / fabs((double)want_loss);
    double worst = 0;
    std::string worst_name;
    for (const ParamTensor &t : m->tensors) {
        bool skipped = false;
        for (const std::string &s : skip) skipped = skipped || t.name.find(s) != std::string::npos;
        if (skipped) continue;
        double e = rel_err(got.grads.data() + t.offset, want_grads + t.offset, t.size());
        if (e > worst) { worst = e; worst_name = t.name; }
        CHECK_MESSAGE(e <= 5e-4, std::string(what) << ": gradient of " << t.name << " relative error " << e);
    }
    printf("%s: logits %.2e  loss %.2e  worst gradient %.2e (%s)\n", what, e_logits, e_loss, worst, worst_name.c_str());
    CHECK_MESSAGE(e_logits <= 1e-4, std::string(what) << ": logits relative error " << e_logits);
    CHECK_MESSAGE(e_loss <= 1e-5, std::string(what) << ": loss relative error " << e_loss);
}

// a refdata case on the GPU, in one form: against the reference and against the CPU
static void check_refdata_gpu(const char *model_path, const char *state_path, int form) {
    Config c;
    float *params = nullptr;
    std::string e = read_model_file(model_path, &c, &params);
    REQUIRE_MESSAGE(e.empty(), e);
    DebugState ref;
    e = read_debug_state(state_path, &ref);
    REQUIRE_MESSAGE(e.empty(), e);
    Model g, m;
    gpu::model_init(&g, &c, params);
    cpu::model_init(&m, &c, params);  // takes params
    REQUIRE(ref.num_params == g.num_params);
    g.mixer_form = m.mixer_form = form;
    gpu::model_alloc_acts(&g, ref.B, ref.T, form == MIX_RECURRENT);
    cpu::model_alloc_acts(&m, ref.B, ref.T, form == MIX_RECURRENT);
    Pass got = gpu_pass(&g, ref.inputs, ref.targets, ref.B, ref.T);
    cpu::model_forward(&m, ref.inputs.data(), ref.targets.data(), ref.B, ref.T);
    cpu::model_zero_grad(&m);
    cpu::model_backward(&m);
    std::string what = std::string(model_path) + (form == MIX_CHUNKED ? " (GPU, chunked)" : " (GPU, recurrent)");
    check_pass((what + " vs reference").c_str(), &g, got, ref.logits.data(), ref.loss, ref.grads.data());
    check_pass((what + " vs CPU").c_str(), &g, got, m.acts.logits, m.loss, m.grads);
    gpu::model_free(&g);
    cpu::model_free(&m);
}

TEST_CASE("gpu: refdata, GLA heads [4, 1]" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    for (int form : {MIX_CHUNKED, MIX_RECURRENT}) check_refdata_gpu("tests/refdata/gla_small.bin", "tests/refdata/gla_small.state.bin", form);
}
TEST_CASE("gpu: refdata, GLA merged heads [1, 1]" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    for (int form : {MIX_CHUNKED, MIX_RECURRENT})
        check_refdata_gpu("tests/refdata/gla_small_merge_every1_out.bin", "tests/refdata/gla_small_merge_every1_out.state.bin", form);
}
TEST_CASE("gpu: refdata, Mamba2 N [16, 64]" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    for (int form : {MIX_CHUNKED, MIX_RECURRENT}) check_refdata_gpu("tests/refdata/mamba2_small.bin", "tests/refdata/mamba2_small.state.bin", form);
}
TEST_CASE("gpu: refdata, Mamba2 expanded N [64, 64]" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    for (int form : {MIX_CHUNKED, MIX_RECURRENT})
        check_refdata_gpu("tests/refdata/mamba2_small_zero_e4_every2_out.bin", "tests/refdata/mamba2_small_zero_e4_every2_out.state.bin", form);
}

// one AdamW step (with clipping and one frozen tensor) on both devices
static void check_train_step(const Config &c, uint64_t seed) {
    INFO(std::string(family_name(c.family)) << " training step");
    const int B = 2, T = 40;
    float *params = test_params(&c, seed);
    std::vector<float> p0(params, params + num_params_of(&c));
    Model g, m;
    gpu::model_init(&g, &c, params);
    cpu::model_init(&m, &c, params);
    gpu::model_alloc_acts(&g, B, T);
    cpu::model_alloc_acts(&m, B, T);
    const size_t frozen = 1;  // the first layer's first tensor
    g.lr_scale[frozen] = m.lr_scale[frozen] = 0.0f;
    g.lr_scale[2] = m.lr_scale[2] = 0.5f;
    std::vector<int> in, tg;
    random_batch(B, T, seed + 1, &in, &tg);
    AdamWConfig opt;
    Pass got = gpu_pass(&g, in, tg, B, T);
    cpu::model_forward(&m, in.data(), tg.data(), B, T);
    cpu::model_zero_grad(&m);
    cpu::model_backward(&m);
    for (const ParamTensor &t : g.tensors) {
        double e = rel_err(got.grads.data() + t.offset, m.grads + t.offset, t.size());
        CHECK_MESSAGE(e <= 5e-4, "gradient of " << t.name << ": relative error " << e);
    }
    float norm_g = gpu::model_grad_norm(&g), norm_c = cpu::model_grad_norm(&m);
    CHECK_MESSAGE(fabs(norm_g - norm_c) <= 1e-5 * norm_c, "grad norm GPU " << norm_g << " CPU " << norm_c);
    // Adam's first step moves every parameter by about lr * sign(g): one gradient
    // element near zero whose sign differs between the devices (well within the
    // gradient tolerance above) would move its parameter by a whole lr, far past
    // any tolerance on the parameters. So the step is checked from the same
    // gradients on both sides: the CPU takes the GPU's, and the update itself,
    // elementwise, must then agree to rounding.
    memcpy(m.grads, got.grads.data(), m.num_params * sizeof(float));
    float scale = norm_g > 1.0f ? 1.0f / norm_g : 1.0f;
    gpu::model_update(&g, 1e-3f, scale, 1, &opt);
    cpu::model_update(&m, 1e-3f, scale, 1, &opt);
    std::vector<float> after(g.num_params), am(g.num_params), av(g.num_params);
    gpu::params_to_host(&g, after.data());
    gpu::adam_to_host(&g, am.data(), av.data());
    double e = rel_err(after.data(), m.params, m.num_params);
    printf("%s training step: parameters GPU vs CPU %.2e (the same gradients)\n", family_name(c.family), e);
    CHECK_MESSAGE(e <= 1e-6, "parameters after the step: relative error " << e);
    CHECK(rel_err(am.data(), m.adam_m, m.num_params) <= 1e-6);
    CHECK(rel_err(av.data(), m.adam_v, m.num_params) <= 1e-6);
    const ParamTensor &f = g.tensors[frozen];
    CHECK_MESSAGE(memcmp(after.data() + f.offset, p0.data() + f.offset, f.size() * sizeof(float)) == 0, "frozen tensor " << f.name << " moved");
    // the host round trips
    gpu::params_from_host(&g, p0.data());
    gpu::params_to_host(&g, after.data());
    CHECK(after == p0);
    gpu::adam_from_host(&g, m.adam_m, m.adam_v);
    gpu::adam_to_host(&g, am.data(), av.data());
    CHECK(memcmp(am.data(), m.adam_m, m.num_params * sizeof(float)) == 0);
    CHECK(memcmp(av.data(), m.adam_v, m.num_params * sizeof(float)) == 0);
    gpu::model_free(&g);
    cpu::model_free(&m);
    CHECK(gpu::memory_peak_bytes() > 0);
}

TEST_CASE("gpu: one training step, CPU vs GPU" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    check_train_step(small_gla({2, 1}), 21);
    check_train_step(small_mamba2({16, 32}), 22);
}

// Two AdamW steps on the GPU from a fixed start; what they leave behind, for
// comparing bits. nan_acts: the activations start as NaN (STATEX_GPU_NAN_FILL).
struct TrainRun { std::vector<float> losses, params, m, v; };
static TrainRun train_two_steps(const Config &c, uint64_t seed, bool nan_acts) {
    const int B = 3, T = 70;  // GLA: 5 chunks; Mamba2: 2, the last short; tokens repeat
    float *params = test_params(&c, seed);
    Model g;
    gpu::model_init(&g, &c, params);
    free(params);
    if (nan_acts) setenv("STATEX_GPU_NAN_FILL", "1", 1);
    gpu::model_alloc_acts(&g, B, T);
    unsetenv("STATEX_GPU_NAN_FILL");
    AdamWConfig opt;
    TrainRun run;
    for (int step = 1; step <= 2; step++) {
        std::vector<int> in, tg;
        random_batch(B, T, seed + step, &in, &tg);
        gpu::model_forward(&g, in.data(), tg.data(), B, T);
        gpu::model_zero_grad(&g);
        gpu::model_backward(&g);
        float norm = gpu::model_grad_norm(&g);
        gpu::model_update(&g, 1e-3f, norm > 1.0f ? 1.0f / norm : 1.0f, step, &opt);
        run.losses.push_back(g.loss);
    }
    run.params.resize(g.num_params);
    run.m.resize(g.num_params);
    run.v.resize(g.num_params);
    gpu::params_to_host(&g, run.params.data());
    gpu::adam_to_host(&g, run.m.data(), run.v.data());
    gpu::model_free(&g);
    return run;
}
static bool same_bits(const TrainRun &a, const TrainRun &b) {
    auto eq = [](const std::vector<float> &x, const std::vector<float> &y) {
        return x.size() == y.size() && memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
    };
    return eq(a.losses, b.losses) && eq(a.params, b.params) && eq(a.m, b.m) && eq(a.v, b.v);
}

// Training on the GPU is deterministic (statex.cu adds in fixed orders), so two
// runs from the same start give the same bits, and so does a run whose
// activations start as NaN, unless a pass reads an activation it never wrote.
TEST_CASE("gpu: two training steps, run twice, give the same bits" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    for (const Config &c : {small_gla({2, 1}), small_mamba2({16, 32})}) {
        INFO(family_name(c.family));
        TrainRun a = train_two_steps(c, 51, false), b = train_two_steps(c, 51, false), n = train_two_steps(c, 51, true);
        CHECK_MESSAGE(same_bits(a, b), "two GPU runs of two training steps from the same start differ");
        CHECK_MESSAGE(same_bits(a, n), "activations that start as NaN change the result: a pass reads one it never wrote");
    }
}

// Generation on the GPU: T single-token steps in recurrent form from a fresh
// state against one chunked forward over the T tokens; then chunked forwards
// that carry the state across calls.
static void check_generation(const Config &c, uint64_t seed, int B, int T) {
    INFO(std::string(family_name(c.family)) << " generation, T " << T);
    const int Vs = c.vocab_size;
    Model g;
    float *params = test_params(&c, seed);
    gpu::model_init(&g, &c, params);
    free(params);
    gpu::model_alloc_acts(&g, B, T);
    std::vector<int> in, tg;
    random_batch(B, T, seed + 1, &in, &tg);
    std::vector<float> want((size_t)B * T * Vs), got(want.size()), step((size_t)B * Vs);
    gpu::model_forward(&g, in.data(), nullptr, B, T);
    gpu::logits_to_host(&g, want.data());
    RecState st;
    gpu::state_alloc(&c, B, &st);
    g.mixer_form = MIX_RECURRENT;
    for (int t = 0; t < T; t++) {
        std::vector<int> tok(B);
        for (int b = 0; b < B; b++) tok[b] = in[(size_t)b * T + t];
        gpu::model_forward(&g, tok.data(), nullptr, B, 1, &st);
        gpu::logits_to_host(&g, step.data());
        for (int b = 0; b < B; b++) memcpy(&got[((size_t)b * T + t) * Vs], &step[(size_t)b * Vs], Vs * sizeof(float));
    }
    double e = rel_err(got.data(), want.data(), want.size());
    printf("%s generation, %d recurrent steps vs chunked: logits %.2e\n", family_name(c.family), T, e);
    CHECK_MESSAGE(e <= 1e-4, "recurrent steps vs chunked forward: relative error " << e);
    // chunked, in two calls that carry the state: the first T1 tokens, then the rest
    g.mixer_form = MIX_CHUNKED;
    gpu::state_zero(&c, &st);
    const int T1 = T / 2 + 3, T2 = T - T1;
    std::vector<int> first((size_t)B * T1), rest((size_t)B * T2);
    for (int b = 0; b < B; b++) {
        memcpy(&first[(size_t)b * T1], &in[(size_t)b * T], T1 * sizeof(int));
        memcpy(&rest[(size_t)b * T2], &in[(size_t)b * T + T1], T2 * sizeof(int));
    }
    std::vector<float> part((size_t)B * T * Vs);
    gpu::model_forward(&g, first.data(), nullptr, B, T1, &st);
    gpu::logits_to_host(&g, part.data());
    for (int b = 0; b < B; b++) memcpy(&got[(size_t)b * T * Vs], &part[(size_t)b * T1 * Vs], (size_t)T1 * Vs * sizeof(float));
    gpu::model_forward(&g, rest.data(), nullptr, B, T2, &st);
    gpu::logits_to_host(&g, part.data());
    for (int b = 0; b < B; b++)
        memcpy(&got[((size_t)b * T + T1) * Vs], &part[(size_t)b * T2 * Vs], (size_t)T2 * Vs * sizeof(float));
    e = rel_err(got.data(), want.data(), want.size());
    CHECK_MESSAGE(e <= 1e-4, "chunked forwards carrying the state vs one forward: relative error " << e);
    gpu::state_free(&st);
    gpu::model_free(&g);
}

TEST_CASE("gpu: generation, recurrent steps vs chunked forward" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    check_generation(small_gla({2, 2}), 31, 2, 40);
    check_generation(small_gla({4, 1, 2}), 32, 2, 37);       // different heads per layer
    check_generation(small_mamba2({16, 16}), 33, 2, 70);
    check_generation(small_mamba2({8, 32}), 34, 1, 67);      // different state sizes per layer
}

// The recurrent form against the chunked form on the GPU: outputs and every gradient
static void check_forms(const Config &c, uint64_t seed, int T) {
    INFO(std::string(family_name(c.family)) << " forms, T " << T);
    const int B = 2;
    float *params = test_params(&c, seed);
    Model chunked, recurrent;
    gpu::model_init(&chunked, &c, params);
    gpu::model_init(&recurrent, &c, params);
    free(params);
    recurrent.mixer_form = MIX_RECURRENT;
    gpu::model_alloc_acts(&chunked, B, T);
    gpu::model_alloc_acts(&recurrent, B, T, true);
    std::vector<int> in, tg;
    random_batch(B, T, seed + 1, &in, &tg);
    Pass a = gpu_pass(&chunked, in, tg, B, T), b = gpu_pass(&recurrent, in, tg, B, T);
    // at T = 1 the GLA q, k gradients come only through the head norm's eps
    // (tests/refdata/README.md): no meaningful threshold there
    std::vector<std::string> skip;
    if (c.family == FAMILY_GLA && T == 1) skip = {"q_proj", "k_proj"};
    std::string what = strf("%s T %d, chunked vs recurrent (GPU)", family_name(c.family), T);
    check_pass(what.c_str(), &chunked, a, b.logits.data(), b.loss, b.grads.data(), skip);
    gpu::model_free(&chunked);
    gpu::model_free(&recurrent);
}

TEST_CASE("gpu: recurrent vs chunked form, T = 1, 15, 17, 65, 130" * doctest::skip(gpu_skip())) {
    NEED_GPU();
    for (int T : {1, 15, 17, 65, 130}) {
        check_forms(small_gla({4, 1}), 41, T);
        check_forms(small_mamba2({16, 32}), 42, T);
    }
}

#endif  // STATEX_CUDA
