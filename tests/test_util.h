// Helpers shared by the tests.
#pragma once
#include "../model.h"
#include <doctest/doctest.h>
#include <functional>
#include <sys/stat.h>
#include <sys/wait.h>

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
// direction u, (L(x + h u) - L(x - h u)) / 2h against <grad, u>, the error
// relative to |grad|, the typical size of <grad, u> for u ~ N(0, I). (Relative
// to |grad| |u|, as it was, the error shrank by sqrt(n): with 1e-2, a conv
// gradient with a tenth of its entries zeroed passed.) Returns the worst of 3.
// loss() must recompute the scalar loss from the current contents of x.
inline double fd_check(const std::function<double()> &loss, float *x, const float *grad, size_t n, Rng *r,
                       float h = 1e-2f) {
    std::vector<float> x0(x, x + n), u = normal_vec(n, r);
    double worst = 0;
    for (int trial = 0; trial < 3; trial++) {
        if (trial) fill_normal(u.data(), n, r);
        double analytic = 0;
        for (size_t i = 0; i < n; i++) analytic += (double)grad[i] * u[i];
        for (size_t i = 0; i < n; i++) x[i] = x0[i] + h * u[i];
        double lp = loss();
        for (size_t i = 0; i < n; i++) x[i] = x0[i] - h * u[i];
        double lm = loss();
        for (size_t i = 0; i < n; i++) x[i] = x0[i];
        double numeric = (lp - lm) / (2 * h);
        double gnorm = 0;
        for (size_t i = 0; i < n; i++) gnorm += (double)grad[i] * grad[i];
        double err = fabs(numeric - analytic) / (sqrt(gnorm) + 1e-12);
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


// sum(out * R) in double: the scalar the finite-difference checks differentiate
inline double dot_loss(const float *out, const float *R, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)out[i] * R[i];
    return s;
}

// Runs a shell command; returns its exit status (128 + signal when killed) and,
// in *out, what it printed, stderr included unless the command redirects it.
inline int run_command(const std::string &cmd, std::string *out = nullptr) {
    std::string full = cmd.find("2>") == std::string::npos ? cmd + " 2>&1" : cmd;
    FILE *p = popen(full.c_str(), "r");
    REQUIRE(p);
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
    int status = pclose(p);
    if (out) *out = text;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
