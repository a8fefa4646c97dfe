// Every op's backward against finite differences of its forward, on small
// random inputs; and the two forms of each token mixer (recurrent, chunked)
// against each other, outputs and gradients, at lengths around the chunk size.
#include "test_util.h"
#include <omp.h>

typedef std::vector<float> Vec;
static const double FD_TOL = 1e-2;  // directional FD error relative to |grad| (fd_check); correct ops: <= 1.2e-3

TEST_CASE("fd: encoder") {
    Rng r = {1};
    int BT = 7, D = 5, vocab = 4;
    int tokens[7] = {0, 3, 3, 1, 0, 2, 3};
    Vec embed = normal_vec(vocab * D, &r), R = normal_vec(BT * D, &r), out(BT * D), dembed(vocab * D);
    cpu::ops.encoder_backward(dembed.data(), R.data(), tokens, BT, D);
    auto loss = [&] { cpu::ops.encoder_forward(out.data(), tokens, embed.data(), BT, D); return dot_loss(out.data(), R.data(), out.size()); };
    CHECK(fd_check(loss, embed.data(), dembed.data(), embed.size(), &r) < FD_TOL);
}

TEST_CASE("fd: rmsnorm") {
    Rng r = {2};
    int N = 6, D = 19;
    Vec x = normal_vec(N * D, &r), w = normal_vec(D, &r), R = normal_vec(N * D, &r), out(N * D), rstd(N), dx(N * D), dw(D);
    cpu::ops.rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D);
    cpu::ops.rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, D);
    auto loss = [&] { cpu::ops.rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, D); return dot_loss(out.data(), R.data(), out.size()); };
    CHECK(fd_check(loss, x.data(), dx.data(), x.size(), &r) < FD_TOL);
    CHECK(fd_check(loss, w.data(), dw.data(), w.size(), &r) < FD_TOL);
}

TEST_CASE("fd: matmul with bias") {
    Rng r = {3};
    int N = 5, C = 7, OC = 9;
    Vec x = normal_vec(N * C, &r), w = normal_vec(OC * C, &r), bias = normal_vec(OC, &r), R = normal_vec(N * OC, &r);
    Vec out(N * OC), dx(N * C), dw(OC * C), db(OC);
    cpu::ops.matmul_backward(dx.data(), dw.data(), db.data(), R.data(), x.data(), w.data(), N, C, OC);
    auto loss = [&] { cpu::ops.matmul_forward(out.data(), x.data(), w.data(), bias.data(), N, C, OC); return dot_loss(out.data(), R.data(), out.size()); };
    CHECK(fd_check(loss, x.data(), dx.data(), x.size(), &r) < FD_TOL);
    CHECK(fd_check(loss, w.data(), dw.data(), w.size(), &r) < FD_TOL);
    CHECK(fd_check(loss, bias.data(), db.data(), bias.size(), &r) < FD_TOL);
}

// A decode step (N <= 8 rows) takes its own path, split by output columns; it
// must give the GEMM path's numbers (to rounding), on any thread count alike.
TEST_CASE("matmul: the few-rows (decode) path == the GEMM path") {
    Rng r = {31};
    int N = 20, C = 70, OC = 130;  // sizes that fill no block evenly
    Vec x = normal_vec(N * C, &r), w = normal_vec(OC * C, &r), bias = normal_vec(OC, &r), full(N * OC);
    cpu::ops.matmul_forward(full.data(), x.data(), w.data(), bias.data(), N, C, OC);
    int threads = omp_get_max_threads();
    for (int n : {1, 3, 8}) {
        Vec one(n * OC), two(n * OC);
        omp_set_num_threads(1);
        cpu::ops.matmul_forward(one.data(), x.data(), w.data(), bias.data(), n, C, OC);
        omp_set_num_threads(2);
        cpu::ops.matmul_forward(two.data(), x.data(), w.data(), bias.data(), n, C, OC);
        omp_set_num_threads(threads);
        CHECK(one == two);
        double worst = 0;
        for (int i = 0; i < n * OC; i++) worst = std::max(worst, (double)fabsf(one[i] - full[i]) / (1 + fabsf(full[i])));
        CHECK(worst < 1e-5);
    }
}

// A group of matmuls on one input runs all members' blocks (of rows of the
// input, or, decoding, of rows of W) in one parallel loop; each member must come out exactly as its own
// matmul_forward would make it, on the GEMM path and the decode path.
TEST_CASE("matmul group == its members' matmul_forward, bit for bit") {
    Rng r = {32};
    int C = 70, OCs[3] = {130, 16, 257};
    for (int N : {1, 3, 8, 9, 300}) {
        Vec x = normal_vec(N * C, &r);
        std::vector<Vec> w, alone, grouped;
        MatmulGroup g = {3, {}, {}, {}};
        for (int i = 0; i < 3; i++) {
            w.push_back(normal_vec(OCs[i] * C, &r));
            alone.push_back(Vec(N * OCs[i]));
            grouped.push_back(Vec(N * OCs[i], NAN));
        }
        for (int i = 0; i < 3; i++) {
            cpu::ops.matmul_forward(alone[i].data(), x.data(), w[i].data(), nullptr, N, C, OCs[i]);
            g.out[i] = grouped[i].data();
            g.w[i] = w[i].data();
            g.OC[i] = OCs[i];
        }
        cpu::ops.matmul_group_forward(&g, x.data(), N, C);
        for (int i = 0; i < 3; i++) CHECK_MESSAGE(alone[i] == grouped[i], "N " << N << ", member " << i);
    }
}

TEST_CASE("fd: swiglu and the GLA gate") {
    Rng r = {4};
    size_t n = 40;
    Vec g = normal_vec(n, &r, 2), u = normal_vec(n, &r), R = normal_vec(n, &r), h(n), dg(n), du(n);
    cpu::ops.swiglu_backward(dg.data(), du.data(), R.data(), g.data(), u.data(), n);
    auto loss = [&] { cpu::ops.swiglu_forward(h.data(), g.data(), u.data(), n); return dot_loss(h.data(), R.data(), n); };
    CHECK(fd_check(loss, g.data(), dg.data(), n, &r) < FD_TOL);
    CHECK(fd_check(loss, u.data(), du.data(), n, &r) < FD_TOL);
    Vec x = normal_vec(n, &r, 3), a(n), dx(n);
    cpu::ops.gla_gate_backward(dx.data(), R.data(), x.data(), n);
    auto loss2 = [&] { cpu::ops.gla_gate_forward(a.data(), x.data(), n); return dot_loss(a.data(), R.data(), n); };
    CHECK(fd_check(loss2, x.data(), dx.data(), n, &r) < FD_TOL);
}

TEST_CASE("GLA gate: the vectorised logsigmoid matches float64 over the whole range") {
    // x from -60 to 60 in steps of 1/1000, through the tails where e^-|x| is
    // below float precision next to 1 (the y / (u - 1) correction)
    size_t n = 120001;
    Vec x(n), a(n);
    for (size_t i = 0; i < n; i++) x[i] = -60.0f + (float)i / 1000.0f;
    cpu::ops.gla_gate_forward(a.data(), x.data(), n);
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double xd = x[i], ref = (std::min(xd, 0.0) - log1p(exp(-fabs(xd)))) / 16.0;
        worst = std::max(worst, fabs(a[i] - ref) / fabs(ref));
    }
    CHECK(worst < 1e-6);
}

TEST_CASE("fd: GLA per-head norm and output gate") {
    Rng r = {5};
    int BT = 4, H = 3, dv = 8;
    size_t n = (size_t)BT * H * dv;
    Vec o = normal_vec(n, &r), og = normal_vec(n, &r), w = normal_vec(dv, &r), R = normal_vec(n, &r);
    Vec out(n), rstd(BT * H), d_o(n), dog(n), dw(dv);
    cpu::ops.head_norm_gate_forward(out.data(), rstd.data(), o.data(), og.data(), w.data(), BT, H, dv);
    cpu::ops.head_norm_gate_backward(d_o.data(), dog.data(), dw.data(), R.data(), o.data(), og.data(), w.data(), rstd.data(), BT, H, dv);
    auto loss = [&] {
        cpu::ops.head_norm_gate_forward(out.data(), rstd.data(), o.data(), og.data(), w.data(), BT, H, dv);
        return dot_loss(out.data(), R.data(), n);
    };
    CHECK(fd_check(loss, o.data(), d_o.data(), n, &r) < FD_TOL);
    CHECK(fd_check(loss, og.data(), dog.data(), n, &r) < FD_TOL);
    CHECK(fd_check(loss, w.data(), dw.data(), dv, &r) < FD_TOL);
}

TEST_CASE("fd: Mamba2 conv1d + SiLU, softplus dt, gated rmsnorm") {
    Rng r = {6};
    int B = 2, T = 9, Cc = 70, W = 4, stride = 75;  // strided input rows, a partial channel block
    Vec in = normal_vec((size_t)B * T * stride, &r), w = normal_vec(Cc * W, &r, 0.5f), bias = normal_vec(Cc, &r, 0.1f);
    Vec R = normal_vec((size_t)B * T * Cc, &r), out(B * T * Cc), pre(B * T * Cc), din(in.size()), dw(Cc * W), db(Cc);
    cpu::ops.conv1d_silu_forward(out.data(), pre.data(), in.data(), stride, w.data(), bias.data(), nullptr, B, T, Cc, W);
    cpu::ops.conv1d_silu_backward(din.data(), stride, dw.data(), db.data(), R.data(), pre.data(), in.data(), stride, w.data(), B, T, Cc, W);
    auto loss = [&] {
        cpu::ops.conv1d_silu_forward(out.data(), pre.data(), in.data(), stride, w.data(), bias.data(), nullptr, B, T, Cc, W);
        return dot_loss(out.data(), R.data(), out.size());
    };
    CHECK(fd_check(loss, in.data(), din.data(), in.size(), &r) < FD_TOL);
    CHECK(fd_check(loss, w.data(), dw.data(), w.size(), &r) < FD_TOL);
    CHECK(fd_check(loss, bias.data(), db.data(), bias.size(), &r) < FD_TOL);

    int BT = 6, nh = 3, rs = 5;
    Vec raw = normal_vec(BT * rs, &r), dtb = normal_vec(nh, &r), Rd = normal_vec(BT * nh, &r), dt(BT * nh), draw(BT * rs), ddtb(nh);
    cpu::ops.dt_softplus_backward(draw.data(), rs, ddtb.data(), Rd.data(), raw.data(), rs, dtb.data(), BT, nh);
    auto loss2 = [&] { cpu::ops.dt_softplus_forward(dt.data(), raw.data(), rs, dtb.data(), BT, nh); return dot_loss(dt.data(), Rd.data(), dt.size()); };
    CHECK(fd_check(loss2, raw.data(), draw.data(), raw.size(), &r) < FD_TOL);
    CHECK(fd_check(loss2, dtb.data(), ddtb.data(), nh, &r) < FD_TOL);

    int E = 11, zs = 15;
    Vec y = normal_vec(BT * E, &r), z = normal_vec(BT * zs, &r), gw = normal_vec(E, &r), Rg = normal_vec(BT * E, &r);
    Vec go(BT * E), grstd(BT), dy(BT * E), dz(BT * zs), dgw(E), gwork(BT * E);
    cpu::ops.gated_rmsnorm_forward(go.data(), grstd.data(), y.data(), z.data(), zs, gw.data(), BT, E);
    cpu::ops.gated_rmsnorm_backward(dy.data(), dz.data(), zs, dgw.data(), Rg.data(), y.data(), z.data(), zs, gw.data(), grstd.data(), BT, E, gwork.data());
    auto loss3 = [&] {
        cpu::ops.gated_rmsnorm_forward(go.data(), grstd.data(), y.data(), z.data(), zs, gw.data(), BT, E);
        return dot_loss(go.data(), Rg.data(), go.size());
    };
    CHECK(fd_check(loss3, y.data(), dy.data(), y.size(), &r) < FD_TOL);
    CHECK(fd_check(loss3, z.data(), dz.data(), z.size(), &r) < FD_TOL);
    CHECK(fd_check(loss3, gw.data(), dgw.data(), E, &r) < FD_TOL);
}

// The conv's tasks are (sequence, channel block), and the block width follows
// the thread count when there are fewer sequences than threads; each channel's
// sums must still run in the same order, so every thread count gives the same
// bits (resume relies on it). Cc 1100 crosses a block of 1024 channels.
TEST_CASE("conv1d + SiLU: forward and backward on 1, 2 or 3 threads, bit for bit") {
    Rng r = {61};
    int threads = omp_get_max_threads();
    for (int B : {1, 3}) {
        int T = 37, Cc = 1100, W = 4, stride = 1130;
        Vec in = normal_vec((size_t)B * T * stride, &r), w = normal_vec(Cc * W, &r, 0.5f), bias = normal_vec(Cc, &r, 0.1f);
        Vec dout = normal_vec((size_t)B * T * Cc, &r), base_din = normal_vec(in.size(), &r), base_dw = normal_vec(Cc * W, &r);
        std::vector<Vec> got;
        for (int nt : {1, 2, 3}) {
            omp_set_num_threads(nt);
            Vec out(B * T * Cc), pre(B * T * Cc), din = base_din, dw = base_dw, db(Cc, 1.0f);  // din is written, dw and db added to
            cpu::ops.conv1d_silu_forward(out.data(), pre.data(), in.data(), stride, w.data(), bias.data(), nullptr, B, T, Cc, W);
            cpu::ops.conv1d_silu_backward(din.data(), stride, dw.data(), db.data(), dout.data(), pre.data(), in.data(), stride, w.data(), B, T, Cc, W);
            for (Vec *v : {&out, &pre, &din, &dw, &db}) got.push_back(*v);
        }
        omp_set_num_threads(threads);
        for (size_t i = 5; i < got.size(); i++) CHECK_MESSAGE(got[i] == got[i % 5], "B " << B << ", result " << i % 5 << ", threads " << 1 + i / 5);
    }
}

// The gated norm's backward sums dw over blocks of rows, one task each, and
// adds the blocks' parts in order: every thread count gives the same bits.
// BT 203 is three whole blocks of 64 rows and a short one.
TEST_CASE("gated rmsnorm backward: 1, 2 or 3 threads, bit for bit") {
    Rng r = {67};
    int threads = omp_get_max_threads();
    int BT = 203, E = 40, zs = 52;
    Vec y = normal_vec(BT * E, &r), z = normal_vec(BT * zs, &r), w = normal_vec(E, &r), dout = normal_vec(BT * E, &r);
    Vec base_dy = normal_vec(BT * E, &r), base_dz = normal_vec(BT * zs, &r), base_dw = normal_vec(E, &r);
    Vec out(BT * E), rstd(BT);
    cpu::ops.gated_rmsnorm_forward(out.data(), rstd.data(), y.data(), z.data(), zs, w.data(), BT, E);
    std::vector<Vec> got;
    for (int nt : {1, 2, 3}) {
        omp_set_num_threads(nt);
        Vec dy = base_dy, dz = base_dz, dw = base_dw, work(BT * E);  // dy, dz are written, dw added to
        cpu::ops.gated_rmsnorm_backward(dy.data(), dz.data(), zs, dw.data(), dout.data(), y.data(), z.data(), zs, w.data(),
                                        rstd.data(), BT, E, work.data());
        for (Vec *v : {&dy, &dz, &dw}) got.push_back(*v);
    }
    omp_set_num_threads(threads);
    for (size_t i = 3; i < got.size(); i++) CHECK_MESSAGE(got[i] == got[i % 3], "result " << i % 3 << ", threads " << 1 + i / 3);
    CHECK(got[2] != base_dw);
}

// The elementwise ops and norms inside a block WRITE their input's gradient
// (=) rather than add to it, so the model's backward does not zero those
// buffers (model.h, the op table). Their results must not depend on what the
// buffer held, and where it is a slice of wider rows (the conv, dt and the
// gated norm write parts of in_proj's output gradient) the rest of each row
// must be left as it was; their weight gradients still add.
TEST_CASE("backward ops that write their input's gradient: the old contents never matter, the rest of a row is kept") {
    Rng r = {71};
    int B = 2, T = 13, BT = B * T, Cc = 40, W = 4, H = 3, dv = 8, E = 24, nh = 3, stride = 100;  // row: [z E | xbc Cc | dt nh | 33 more]
    size_t n = (size_t)BT * H * dv;
    Vec g = normal_vec(n, &r), u = normal_vec(n, &r), dh = normal_vec(n, &r), og = normal_vec(n, &r), hw = normal_vec(dv, &r);
    Vec pre = normal_vec((size_t)BT * Cc, &r), cw = normal_vec(Cc * W, &r), dcout = normal_vec((size_t)BT * Cc, &r);
    Vec in = normal_vec((size_t)BT * stride, &r), ddt = normal_vec((size_t)BT * nh, &r), dtb = normal_vec(nh, &r);
    Vec y = normal_vec((size_t)BT * E, &r), gw = normal_vec(E, &r), dgout = normal_vec((size_t)BT * E, &r);
    Vec hout(n), hrstd(BT * H), gout((size_t)BT * E), grstd(BT), work((size_t)BT * E);
    cpu::ops.head_norm_gate_forward(hout.data(), hrstd.data(), g.data(), og.data(), hw.data(), BT, H, dv);
    cpu::ops.gated_rmsnorm_forward(gout.data(), grstd.data(), y.data(), in.data(), stride, gw.data(), BT, E);
    // every op once, its written outputs filled with `fill` first; weight gradients start at 1
    auto all = [&](float fill) {
        std::vector<Vec> o;
        Vec a(n, fill), b(n, fill);
        cpu::ops.swiglu_backward(a.data(), b.data(), dh.data(), g.data(), u.data(), n);
        o.push_back(a); o.push_back(b);
        Vec c(n, fill);
        cpu::ops.gla_gate_backward(c.data(), dh.data(), g.data(), n);
        o.push_back(c);
        Vec d(n, fill), e(n, fill), dw(dv, 1.0f);
        cpu::ops.head_norm_gate_backward(d.data(), e.data(), dw.data(), dh.data(), g.data(), og.data(), hw.data(), hrstd.data(), BT, H, dv);
        o.push_back(d); o.push_back(e); o.push_back(dw);
        Vec rows((size_t)BT * stride, fill), gdy((size_t)BT * E, fill), gdw(E, 1.0f), cdw(Cc * W, 1.0f), cdb(Cc, 1.0f), tdb(nh, 1.0f);
        for (int i = 0; i < BT; i++)
            for (int j = E + Cc + nh; j < stride; j++) rows[(size_t)i * stride + j] = 7.0f;  // not the ops': must stay
        cpu::ops.gated_rmsnorm_backward(gdy.data(), rows.data(), stride, gdw.data(), dgout.data(), y.data(), in.data(), stride, gw.data(),
                                        grstd.data(), BT, E, work.data());
        cpu::ops.conv1d_silu_backward(rows.data() + E, stride, cdw.data(), cdb.data(), dcout.data(), pre.data(), in.data() + E, stride,
                                      cw.data(), B, T, Cc, W);
        cpu::ops.dt_softplus_backward(rows.data() + E + Cc, stride, tdb.data(), ddt.data(), in.data() + E + Cc, stride, dtb.data(), BT, nh);
        for (int i = 0; i < BT; i++)
            for (int j = E + Cc + nh; j < stride; j++) CHECK(rows[(size_t)i * stride + j] == 7.0f);
        for (Vec *v : {&gdy, &rows, &gdw, &cdw, &cdb, &tdb}) o.push_back(*v);
        return o;
    };
    std::vector<Vec> from_zero = all(0.0f), from_nan = all(NAN);
    REQUIRE(from_zero.size() == from_nan.size());
    for (size_t i = 0; i < from_zero.size(); i++) CHECK_MESSAGE(from_zero[i] == from_nan[i], "output " << i);
    // a weight gradient still adds: head_norm_gate's dw from 0, against from_zero[5], which started at 1
    Vec d(n), e(n), dw(dv, 0.0f);
    cpu::ops.head_norm_gate_backward(d.data(), e.data(), dw.data(), dh.data(), g.data(), og.data(), hw.data(), hrstd.data(), BT, H, dv);
    for (int j = 0; j < dv; j++) CHECK(from_zero[5][j] == 1.0f + dw[j]);
}

TEST_CASE("fd: cross-entropy with ignored targets") {
    Rng r = {7};
    int BT = 6, V = 13;
    int targets[6] = {3, -1, 12, 0, -1, 7};
    Vec logits = normal_vec(BT * V, &r, 2), losses(BT), dl(BT * V);
    int n = 0;
    float L = cpu::ops.crossentropy_forward(losses.data(), &n, logits.data(), targets, BT, V);
    CHECK(n == 4);
    CHECK(losses[1] == 0.0f);
    cpu::ops.crossentropy_backward(dl.data(), logits.data(), targets, BT, V, 1.0f / n);
    for (int i = 0; i < V; i++) CHECK(dl[1 * V + i] == 0.0f);  // ignored rows get no gradient
    auto loss = [&] { int m; return (double)cpu::ops.crossentropy_forward(losses.data(), &m, logits.data(), targets, BT, V); };
    CHECK(fd_check(loss, logits.data(), dl.data(), logits.size(), &r) < FD_TOL);
    CHECK(L > 0);
    int none[6] = {-1, -1, -1, -1, -1, -1};  // no targets at all: loss 0
    CHECK(cpu::ops.crossentropy_forward(losses.data(), &n, logits.data(), none, BT, V) == 0.0f);
    CHECK(n == 0);
}

// ----------------------------------------------------------------------------
// the token mixers

// The scans' scratch, one slice per thread: scan_work_floats (the most a scan
// says it uses), rounded up, then a canary no scan may touch, checked after
// every run (check_canaries).
#define SCRATCH_CANARY 16
static const float CANARY = -31415.9f;
static size_t per_thread(const Config &c) { return ((cpu::scan_work_floats(&c) + 15) & ~(size_t)15) + SCRATCH_CANARY; }
static std::vector<float> scan_scratch(const Config &c) {
    size_t per = per_thread(c), work = cpu::scan_work_floats(&c);
    std::vector<float> ws(per * omp_get_max_threads());
    for (size_t t = 0; t < ws.size() / per; t++)
        for (size_t i = work; i < per; i++) ws[t * per + i] = CANARY;
    return ws;
}
static void check_canaries(const std::vector<float> &ws, const Config &c) {
    size_t per = per_thread(c), work = cpu::scan_work_floats(&c), touched = 0;
    for (size_t t = 0; t < ws.size() / per; t++)
        for (size_t i = work; i < per; i++) touched += ws[t * per + i] != CANARY;
    CHECK_MESSAGE(touched == 0, "a scan wrote past scan_work_floats in its slice of the scratch");
}

struct GlaCase {
    int B, T, H, K, V;
    Vec q, k, v, a, dout;
};
static GlaCase gla_case(int B, int T, int H, int K, int V, float decay_lo, float decay_hi, uint64_t seed) {
    Rng r = {seed};
    GlaCase g{B, T, H, K, V, {}, {}, {}, {}, {}};
    size_t nk = (size_t)B * T * K, nv = (size_t)B * T * V;
    g.q = normal_vec(nk, &r); g.k = normal_vec(nk, &r); g.v = normal_vec(nv, &r); g.dout = normal_vec(nv, &r);
    g.a.resize(nk);
    for (float &x : g.a) x = decay_lo + (decay_hi - decay_lo) * rng_uniform(&r);  // log decays <= 0
    return g;
}
static Config gla_config(int H, int K, int V) {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_GLA; c.n_layer = 1; c.key_dim = K; c.value_dim = V; c.n_head[0] = H;
    return c;
}

// outputs and gradients of both forms, and the states each keeps (chunked: the
// kept chunk states [B, H, gla_state_slots(T), hk, hv]; recurrent: S_all)
struct GlaResult { Vec o, dq, dk, dv, da, states; };
static GlaResult gla_run(GlaCase &g, bool chunked) {
    int B = g.B, T = g.T, H = g.H, K = g.K, V = g.V, hk = K / H, hv = V / H;
    Config c = gla_config(H, K, V);
    Vec ws = scan_scratch(c);
    GlaResult res{Vec((size_t)B * T * V), Vec(g.q.size()), Vec(g.k.size()), Vec(g.v.size()), Vec(g.a.size()), Vec()};
    if (chunked) {
        Vec S((size_t)B * H * gla_state_slots(T) * hk * hv);
        cpu::ops.gla_chunk_forward(res.o.data(), S.data(), g.q.data(), g.k.data(), g.v.data(), g.a.data(), B, T, H, K, V, ws.data(), per_thread(c));
        cpu::ops.gla_chunk_backward(res.dq.data(), res.dk.data(), res.dv.data(), res.da.data(), g.dout.data(), S.data(), g.q.data(), g.k.data(),
                                g.v.data(), g.a.data(), B, T, H, K, V, ws.data(), per_thread(c));
        res.states = std::move(S);
    } else {
        Vec S((size_t)B * H * hk * hv), S_all((size_t)B * H * T * hk * hv);
        cpu::ops.gla_recurrent_forward(res.o.data(), S.data(), S_all.data(), g.q.data(), g.k.data(), g.v.data(), g.a.data(), B, T, H, K, V);
        cpu::ops.gla_recurrent_backward(res.dq.data(), res.dk.data(), res.dv.data(), res.da.data(), g.dout.data(), S_all.data(), g.q.data(),
                                    g.k.data(), g.v.data(), g.a.data(), B, T, H, K, V, ws.data(), per_thread(c));
        res.states = std::move(S_all);
    }
    check_canaries(ws, c);
    return res;
}

static bool all_finite(const Vec &v) {
    for (float x : v) if (!std::isfinite(x)) return false;
    return true;
}

TEST_CASE("GLA: recurrent form == chunked form, outputs and gradients") {
    const int C = GLA_CHUNK;
    for (int T : {1, C - 1, C, C + 1, 3 * C + 5}) {
        for (int strong = 0; strong < 2; strong++) {
            // strong decay: log gates down to -8 per step, the cumulative sum reaches about -130 in one chunk
            GlaCase g = gla_case(2, T, 2, 8, 12, strong ? -8.0f : -0.6f, strong ? -4.0f : 0.0f, 10 + T);
            GlaResult rec = gla_run(g, false), chk = gla_run(g, true);
            CAPTURE(T); CAPTURE(strong);
            CHECK(all_finite(chk.o)); CHECK(all_finite(chk.da));
            CHECK(rel_err(chk.o.data(), rec.o.data(), rec.o.size()) < 1e-5);
            CHECK(rel_err(chk.dq.data(), rec.dq.data(), rec.dq.size()) < 1e-4);
            CHECK(rel_err(chk.dk.data(), rec.dk.data(), rec.dk.size()) < 1e-4);
            CHECK(rel_err(chk.dv.data(), rec.dv.data(), rec.dv.size()) < 1e-4);
            CHECK(rel_err(chk.da.data(), rec.da.data(), rec.da.size()) < 1e-4);
        }
    }
}

// The chunked form keeps the state entering every GLA_STATE_EVERY-th chunk (one
// per 64 tokens) and the final state; its backward recomputes the states
// between. Around the boundaries of those groups of chunks: the kept states are
// the recurrent form's at the same tokens, and the gradients are the recurrent form's.
TEST_CASE("GLA: chunked form keeping a state every 64 tokens == recurrent form, states and gradients") {
    const int G = GLA_CHUNK * GLA_STATE_EVERY;  // tokens per kept state
    REQUIRE(G == 64);
    for (int T : {1, GLA_CHUNK, G - 1, G, G + 1, 2 * G + 2}) {
        for (int strong = 0; strong < 2; strong++) {
            GlaCase g = gla_case(2, T, 2, 8, 12, strong ? -8.0f : -0.6f, strong ? -4.0f : 0.0f, 30 + T);
            GlaResult rec = gla_run(g, false), chk = gla_run(g, true);
            CAPTURE(T); CAPTURE(strong);
            int ns = gla_state_slots(T);
            REQUIRE(ns == (T + 63) / 64 + 1);
            size_t X = 4 * 6;  // hk x hv
            for (int bh = 0; bh < 2 * 2; bh++)
                for (int slot = 1; slot < ns; slot++) {  // slot 0 is the initial state (zeros here)
                    int t = std::min(slot * G, T) - 1;  // the last token before it
                    CAPTURE(bh); CAPTURE(slot);
                    CHECK(rel_err(chk.states.data() + ((size_t)bh * ns + slot) * X,
                                  rec.states.data() + ((size_t)bh * T + t) * X, X) < 1e-5);
                }
            CHECK(all_finite(chk.da));
            CHECK(rel_err(chk.o.data(), rec.o.data(), rec.o.size()) < 1e-5);
            CHECK(rel_err(chk.dq.data(), rec.dq.data(), rec.dq.size()) < 1e-4);
            CHECK(rel_err(chk.dk.data(), rec.dk.data(), rec.dk.size()) < 1e-4);
            CHECK(rel_err(chk.dv.data(), rec.dv.data(), rec.dv.size()) < 1e-4);
            CHECK(rel_err(chk.da.data(), rec.da.data(), rec.da.size()) < 1e-4);
        }
    }
}

TEST_CASE("fd: GLA scan, both forms") {
    GlaCase g = gla_case(1, 21, 2, 6, 8, -0.7f, 0.0f, 99);
    for (int chunked = 0; chunked < 2; chunked++) {
        GlaResult res = gla_run(g, chunked);
        Rng r = {5};
        auto loss = [&] { GlaResult x = gla_run(g, chunked); return dot_loss(x.o.data(), g.dout.data(), x.o.size()); };
        CAPTURE(chunked);
        CHECK(fd_check(loss, g.q.data(), res.dq.data(), g.q.size(), &r) < FD_TOL);
        CHECK(fd_check(loss, g.k.data(), res.dk.data(), g.k.size(), &r) < FD_TOL);
        CHECK(fd_check(loss, g.v.data(), res.dv.data(), g.v.size(), &r) < FD_TOL);
        CHECK(fd_check(loss, g.a.data(), res.da.data(), g.a.size(), &r) < FD_TOL);
    }
}

struct SsdCase {
    int B, T, nh, P, N;
    Vec xbc, dt, A_log, Dskip, dy;
};
static SsdCase ssd_case(int B, int T, int nh, int P, int N, float dt_scale, uint64_t seed) {
    Rng r = {seed};
    SsdCase s{B, T, nh, P, N, {}, {}, {}, {}, {}};
    int E = nh * P, Cc = E + 2 * N;
    s.xbc = normal_vec((size_t)B * T * Cc, &r);
    s.dt.resize((size_t)B * T * nh);
    for (float &x : s.dt) x = dt_scale * softplusf(rng_normal(&r));
    s.A_log.resize(nh);
    for (float &x : s.A_log) x = logf(1 + 15 * rng_uniform(&r));
    s.Dskip = normal_vec(nh, &r);
    s.dy = normal_vec((size_t)B * T * E, &r);
    return s;
}
struct SsdResult { Vec y, dxbc, ddt, dA_log, dD; };
static SsdResult ssd_run(SsdCase &s, bool chunked) {
    int B = s.B, T = s.T, nh = s.nh, P = s.P, N = s.N, E = nh * P;
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_MAMBA2; c.n_layer = 1; c.d_inner = E; c.headdim = P; c.d_conv = 4; c.d_state[0] = N;
    Vec ws = scan_scratch(c), dlda((size_t)B * T * nh);
    SsdResult res{Vec((size_t)B * T * E), Vec(s.xbc.size()), Vec(s.dt.size()), Vec(nh), Vec(nh)};
    if (chunked) {
        Vec hs((size_t)B * nh * (n_chunks(T, ssd_chunk_len(N)) + 1) * P * N);
        cpu::ops.ssd_chunk_forward(res.y.data(), hs.data(), s.xbc.data(), s.dt.data(), s.A_log.data(), s.Dskip.data(), B, T, nh, P, N, ws.data(), per_thread(c));
        cpu::ops.ssd_chunk_backward(res.dxbc.data(), res.ddt.data(), dlda.data(), s.dy.data(), hs.data(), s.xbc.data(), s.dt.data(),
                                s.A_log.data(), s.Dskip.data(), B, T, nh, P, N, ws.data(), per_thread(c));
    } else {
        Vec hs((size_t)B * nh * P * N), h_all((size_t)B * nh * T * P * N);
        cpu::ops.ssd_recurrent_forward(res.y.data(), hs.data(), h_all.data(), s.xbc.data(), s.dt.data(), s.A_log.data(), s.Dskip.data(), B, T, nh, P, N);
        cpu::ops.ssd_recurrent_backward(res.dxbc.data(), res.ddt.data(), dlda.data(), s.dy.data(), h_all.data(), s.xbc.data(), s.dt.data(),
                                    s.A_log.data(), s.Dskip.data(), B, T, nh, P, N, ws.data(), per_thread(c));
    }
    cpu::ops.ssd_decay_backward(res.ddt.data(), res.dA_log.data(), res.dD.data(), dlda.data(), s.dy.data(), s.xbc.data(), s.dt.data(),
                            s.A_log.data(), B * T, nh, P, N);
    check_canaries(ws, c);
    return res;
}

TEST_CASE("Mamba2 SSD: recurrent form == chunked form, outputs and gradients") {
    for (int N : {5, 20}) {  // a small state takes shorter chunks (ssd_chunk_len): both lengths
        const int C = ssd_chunk_len(N);
        for (int T : {1, C - 1, C, C + 1, 2 * C + 7})
            for (int strong = 0; strong < 2; strong++) {
                // strong decay: dt*A down to about -80 per step
                SsdCase s = ssd_case(2, T, 3, 4, N, strong ? 5.0f : 0.3f, 20 + T);
                SsdResult rec = ssd_run(s, false), chk = ssd_run(s, true);
                CAPTURE(N); CAPTURE(T); CAPTURE(strong);
                CHECK(all_finite(chk.y)); CHECK(all_finite(chk.ddt));
                CHECK(rel_err(chk.y.data(), rec.y.data(), rec.y.size()) < 1e-5);
                CHECK(rel_err(chk.dxbc.data(), rec.dxbc.data(), rec.dxbc.size()) < 1e-4);
                CHECK(rel_err(chk.ddt.data(), rec.ddt.data(), rec.ddt.size()) < 1e-4);
                CHECK(rel_err(chk.dA_log.data(), rec.dA_log.data(), rec.dA_log.size()) < 1e-3);
                CHECK(rel_err(chk.dD.data(), rec.dD.data(), rec.dD.size()) < 1e-4);
            }
    }
}

TEST_CASE("fd: Mamba2 SSD scan, both forms") {
    SsdCase s = ssd_case(1, 70, 2, 3, 4, 0.3f, 77);
    for (int chunked = 0; chunked < 2; chunked++) {
        SsdResult res = ssd_run(s, chunked);
        Rng r = {6};
        auto loss = [&] { SsdResult x = ssd_run(s, chunked); return dot_loss(x.y.data(), s.dy.data(), x.y.size()); };
        CAPTURE(chunked);
        CHECK(fd_check(loss, s.xbc.data(), res.dxbc.data(), s.xbc.size(), &r) < FD_TOL);
        CHECK(fd_check(loss, s.dt.data(), res.ddt.data(), s.dt.size(), &r, 1e-3f) < FD_TOL);
        CHECK(fd_check(loss, s.A_log.data(), res.dA_log.data(), s.nh, &r, 1e-3f) < FD_TOL);
        CHECK(fd_check(loss, s.Dskip.data(), res.dD.data(), s.nh, &r) < FD_TOL);
    }
}
