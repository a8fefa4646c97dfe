// Helpers shared by the tests.
#pragma once
#include "../model.h"
#include <doctest/doctest.h>
#include <functional>
#include <sys/stat.h>

// ||a - b|| / ||b||, in double
inline double rel_err(const float *a, const float *b, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

inline void fill_normal(float *p, size_t n, Rng *r, float s = 1.0f) {
    for (size_t i = 0; i < n; i++) p[i] = s * rng_normal(r);
}
inline std::vector<float> normal_vec(size_t n, Rng *r, float s = 1.0f) {
    std::vector<float> v(n);
    fill_normal(v.data(), n, r, s);
    return v;
}

// Directional finite-difference check of an analytic gradient: for a random
// direction u, (L(x + h u) - L(x - h u)) / 2h against <grad, u>.
// loss() must recompute the scalar loss from the current contents of x.
inline double fd_check(const std::function<double()> &loss, float *x, const float *grad, size_t n, Rng *r,
                       float h = 1e-2f) {
    std::vector<float> x0(x, x + n), u = normal_vec(n, r);
    double worst = 0;
    for (int trial = 0; trial < 3; trial++) {
        if (trial) fill_normal(u.data(), n, r);
        double analytic = 0, unorm = 0;
        for (size_t i = 0; i < n; i++) { analytic += (double)grad[i] * u[i]; unorm += (double)u[i] * u[i]; }
        for (size_t i = 0; i < n; i++) x[i] = x0[i] + h * u[i];
        double lp = loss();
        for (size_t i = 0; i < n; i++) x[i] = x0[i] - h * u[i];
        double lm = loss();
        for (size_t i = 0; i < n; i++) x[i] = x0[i];
        double numeric = (lp - lm) / (2 * h);
        double gnorm = 0;
        for (size_t i = 0; i < n; i++) gnorm += (double)grad[i] * grad[i];
        // error relative to |grad| |u|, the scale of the directional derivative
        double err = fabs(numeric - analytic) / (sqrt(gnorm * unorm) + 1e-12);
        worst = std::max(worst, err);
    }
    return worst;
}

// Loads a model file the tests need; fails the test with the reason otherwise.
inline bool load_model(const std::string &path, Model *m) {
    Config c;
    float *params = nullptr;
    std::string e = read_model_file(path, &c, &params);
    if (!e.empty()) { FAIL(e); return false; }
    cpu::model_init(m, &c, params);
    return true;
}

// The CPU ops the tests call one by one (statex_cpu.cpp).
namespace cpu {
void encoder_forward(float *out, const int *tokens, const float *embed, int BT, int D);
void encoder_backward(float *dembed, const float *dout, const int *tokens, int BT, int D);
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int D);
void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd, int N, int D);
void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC);
void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int N, int C, int OC);
void swiglu_forward(float *h, const float *g, const float *u, size_t n);
void swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
void gla_gate_forward(float *a, const float *x, size_t n);
void gla_gate_backward(float *dx, const float *da, const float *x, size_t n);
void gla_recurrent_forward(float *o, float *S, float *S_all, const float *q, const float *k, const float *v, const float *a,
                           int B, int T, int H, int K, int V);
void gla_recurrent_backward(float *dq, float *dk, float *dv, float *da, const float *dout, const float *S_all, const float *q,
                            const float *k, const float *v, const float *a, int B, int T, int H, int K, int V, float *scratch,
                            size_t scratch_per_thread);
void gla_chunk_forward(float *o, float *S, const float *q, const float *k, const float *v, const float *a, int B, int T, int H,
                       int K, int V, float *scratch, size_t scratch_per_thread);
void gla_chunk_backward(float *dq, float *dk, float *dv, float *da, const float *dout, const float *S, const float *q,
                        const float *k, const float *v, const float *a, int B, int T, int H, int K, int V, float *scratch,
                        size_t scratch_per_thread);
void head_norm_gate_forward(float *out, float *rstd, const float *o, const float *og, const float *w, int BT, int H, int dv);
void head_norm_gate_backward(float *do_, float *dog, float *dw, const float *dout, const float *o, const float *og, const float *w,
                             const float *rstd, int BT, int H, int dv);
void conv1d_silu_forward(float *out, float *pre, const float *in, int in_stride, const float *w, const float *bias,
                         float *conv_state, int B, int T, int Cc, int W);
void conv1d_silu_backward(float *din, int din_stride, float *dw, float *dbias, const float *dout, const float *pre,
                          const float *in, int in_stride, const float *w, int B, int T, int Cc, int W);
void dt_softplus_forward(float *dt, const float *raw, int raw_stride, const float *bias, int BT, int nh);
void dt_softplus_backward(float *draw, int draw_stride, float *dbias, const float *ddt, const float *raw, int raw_stride,
                          const float *bias, int BT, int nh);
void ssd_recurrent_forward(float *y, float *hs, float *h_all, const float *xbc, const float *dt, const float *A_log,
                           const float *Dskip, int B, int T, int nh, int P, int N);
void ssd_recurrent_backward(float *dxbc, float *ddt, float *dlda, const float *dy, const float *h_all, const float *xbc,
                            const float *dt, const float *A_log, const float *Dskip, int B, int T, int nh, int P, int N,
                            float *scratch, size_t scratch_per_thread);
void ssd_chunk_forward(float *y, float *hs, const float *xbc, const float *dt, const float *A_log, const float *Dskip, int B,
                       int T, int nh, int P, int N, float *scratch, size_t scratch_per_thread);
void ssd_chunk_backward(float *dxbc, float *ddt, float *dlda, const float *dy, const float *hs, const float *xbc,
                        const float *dt, const float *A_log, const float *Dskip, int B, int T, int nh, int P, int N,
                        float *scratch, size_t scratch_per_thread);
void ssd_decay_backward(float *ddt, float *dA_log, float *dD, const float *dlda, const float *dy, const float *xbc,
                        const float *dt, const float *A_log, int BT, int nh, int P, int N);
void gated_rmsnorm_forward(float *out, float *rstd, const float *y, const float *z, int z_stride, const float *w, int BT, int E);
void gated_rmsnorm_backward(float *dy, float *dz, int dz_stride, float *dw, const float *dout, const float *y, const float *z,
                            int z_stride, const float *w, const float *rstd, int BT, int E);
float crossentropy_forward(float *losses, int *n_valid, const float *logits, const int *targets, int BT, int V);
void crossentropy_backward(float *dlogits, const float *logits, const int *targets, int BT, int V, float dloss);
}  // namespace cpu

// sum(out * R) in double: the scalar the finite-difference checks differentiate
inline double dot_loss(const float *out, const float *R, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * R[i];
    return s;
}
