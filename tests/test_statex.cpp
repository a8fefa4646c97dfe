// StateX expansion: the deterministic modes reproduce the reference files byte
// for byte; zero and grow keep the function, and only grow lets the new rows
// learn; reinit redraws exactly the chosen token-mixing weights; bad requests
// are refused.
#include "test_util.h"

static std::vector<char> bytes_of(const std::string &path) {
    std::vector<char> b;
    std::string e = read_file(path, &b);
    REQUIRE_MESSAGE(e.empty(), e);
    return b;
}

// Expands the model file `in` and returns the bytes of the model file it makes.
static std::vector<char> expand_file(const std::string &in, const char *mode, int every, int factor) {
    Config c, ce;
    float *p = nullptr, *pe = nullptr;
    std::string e = read_model_file(in, &c, &p);
    REQUIRE_MESSAGE(e.empty(), e);
    e = cpu::expand_model(&c, p, mode, every, factor, 1, &ce, &pe);
    REQUIRE_MESSAGE(e.empty(), e);
    std::string out = "/tmp/statex_expand_" + std::to_string(getpid()) + ".bin";
    e = write_model_file(out, &ce, pe);
    REQUIRE_MESSAGE(e.empty(), e);
    std::vector<char> b = bytes_of(out);
    remove(out.c_str());
    free(p);
    free(pe);
    return b;
}

TEST_CASE("statex: merge, copy and zero reproduce the reference files byte for byte") {
    CHECK(expand_file("tests/refdata/gla_small_merge_every1_in.bin", "merge", 1, 0) == bytes_of("tests/refdata/gla_small_merge_every1_out.bin"));
    CHECK(expand_file("tests/refdata/mamba2_small_copy_e4_every2_in.bin", "copy", 2, 4) == bytes_of("tests/refdata/mamba2_small_copy_e4_every2_out.bin"));
    CHECK(expand_file("tests/refdata/mamba2_small_zero_e4_every2_in.bin", "zero", 2, 4) == bytes_of("tests/refdata/mamba2_small_zero_e4_every2_out.bin"));
}

TEST_CASE("statex: the command line writes the same file and prints the state table") {
    std::string out = "/tmp/statex_cli_" + std::to_string(getpid()) + ".bin";
    std::string text;
    CHECK(run_command("./train --init tests/refdata/mamba2_small_zero_e4_every2_in.bin --expand zero --expand-every 2 "
                      "--expand-factor 4 --out " + out, &text) == 0);
    CHECK(bytes_of(out) == bytes_of("tests/refdata/mamba2_small_zero_e4_every2_out.bin"));
    CHECK(text.find("Mamba2 model: 79376 -> 86000 parameters (+6624)") != std::string::npos);
    CHECK(text.find("16 -> 64") != std::string::npos);     // layer 0's N
    CHECK(text.find("2528 -> 8960") != std::string::npos);  // and its state
    CHECK(text.find("11488 -> 17920") != std::string::npos);  // the total
    remove(out.c_str());
}

// logits and gradients of a model on fixed random tokens
struct Run { std::vector<float> logits, grads; Model m; };
static void run_model(const Config *c, float *params, Run *r) {
    cpu::model_init(&r->m, c, params);
    int B = 2, T = 67;
    Rng rng = {9};
    std::vector<int> in(B * T), tg(B * T);
    for (int i = 0; i < B * T; i++) { in[i] = rng_int(&rng, 256); tg[i] = rng_int(&rng, 256); }
    cpu::model_alloc_acts(&r->m, B, T);
    cpu::model_forward(&r->m, in.data(), tg.data(), B, T);
    cpu::model_zero_grad(&r->m);
    cpu::model_backward(&r->m);
    r->logits.assign(r->m.acts.logits, r->m.acts.logits + (size_t)B * T * c->vocab_size);
    r->grads.assign(r->m.grads, r->m.grads + r->m.num_params);
}

TEST_CASE("statex: zero and grow keep the function; only grow's new rows get gradient") {
    Config c;
    float *p = nullptr;
    REQUIRE(read_model_file("tests/refdata/mamba2_small.bin", &c, &p).empty());
    Run base;
    run_model(&c, p, &base);
    for (const char *mode : {"zero", "grow"}) {
        Config ce;
        float *pe;
        REQUIRE(cpu::expand_model(&c, base.m.params, mode, 1, 3, 5, &ce, &pe).empty());
        Run ex;
        run_model(&ce, pe, &ex);
        CAPTURE(mode);
        CHECK(rel_err(ex.logits.data(), base.logits.data(), base.logits.size()) < 1e-6);
        // the new B rows of in_proj in each layer: N..3N-1 of the B block
        for (int l = 0; l < c.n_layer; l++) {
            int D = c.d_model, E = c.d_inner, N = c.d_state[l], eN = ce.d_state[l];
            const float *g = ex.m.g.layer[l].in_proj + (size_t)(2 * E + N) * D;
            int rows_with_grad = 0;
            for (int r = 0; r < eN - N; r++) {
                double s = 0;
                for (int j = 0; j < D; j++) s += (double)g[(size_t)r * D + j] * g[(size_t)r * D + j];
                rows_with_grad += s > 0;
            }
            CAPTURE(l);
            if (std::string(mode) == "zero") CHECK(rows_with_grad == 0);
            else CHECK(rows_with_grad == eN - N);
        }
        cpu::model_free(&ex.m);
    }
    cpu::model_free(&base.m);
}

static double stddev(const float *p, size_t n) {
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++) { s += p[i]; s2 += (double)p[i] * p[i]; }
    return sqrt(std::max(0.0, s2 / n - (s / n) * (s / n)));
}

TEST_CASE("statex: reinit redraws the chosen layers' token mixing, keeps everything else bit for bit") {
    for (const char *path : {"tests/refdata/gla_small.bin", "tests/refdata/mamba2_small.bin"}) {
        Config c, ce;
        float *p = nullptr, *pe = nullptr;
        REQUIRE(read_model_file(path, &c, &p).empty());
        REQUIRE(cpu::expand_model(&c, p, "reinit", 2, 2, 3, &ce, &pe).empty());  // layer 0 of 2
        Model mi, mo;
        cpu::model_init(&mi, &c, p);
        cpu::model_init(&mo, &ce, pe);
        CAPTURE(path);
        bool gla = c.family == FAMILY_GLA;
        if (gla) { CHECK(ce.n_head[0] == 1); CHECK(ce.n_head[1] == c.n_head[1]); }
        else { CHECK(ce.d_state[0] == 2 * c.d_state[0]); CHECK(ce.d_state[1] == c.d_state[1]); }
        for (const ParamTensor &t : mo.tensors) {
            const ParamTensor *s = nullptr;
            for (const ParamTensor &u : mi.tensors) if (u.name == t.name) s = &u;
            REQUIRE(s);
            const float *a = mo.params + t.offset, *b = mi.params + s->offset;
            bool chosen = t.layer == 0 && t.is_mixer;
            CAPTURE(t.name);
            if (!chosen) {  // untouched: same shape, same bits
                REQUIRE(t.size() == s->size());
                CHECK(memcmp(a, b, 4 * t.size()) == 0);
                continue;
            }
            const std::string &n = t.name;
            auto ends = [&](const char *suffix) { return n.size() >= strlen(suffix) && n.compare(n.size() - strlen(suffix), strlen(suffix), suffix) == 0; };
            if (gla) {
                if (ends("attn_norm.weight") || ends("g_norm.weight")) { for (size_t i = 0; i < t.size(); i++) CHECK(a[i] == 1.0f); }
                else if (ends("gk_proj1.bias")) { for (size_t i = 0; i < t.size(); i++) CHECK(a[i] == 0.0f); }
                else if (ends("o_proj.weight")) CHECK(stddev(a, t.size()) == doctest::Approx(0.02 / sqrt(2.0 * c.n_layer)).epsilon(0.1));
                else CHECK(stddev(a, t.size()) == doctest::Approx(0.02).epsilon(0.1));  // q, k, v, g, gk0, gk1
                if (!ends("norm.weight") && !ends("bias") && t.size() == s->size()) CHECK(memcmp(a, b, 4 * t.size()) != 0);
            } else {
                int D = c.d_model, E = c.d_inner, N = c.d_state[0], eN = ce.d_state[0], nh = m2_nheads(&c);
                if (ends("mixer.in_proj.weight")) {
                    CHECK(memcmp(a, b, 4 * (size_t)2 * E * D) == 0);  // z, x rows kept
                    CHECK(memcmp(a + (size_t)(2 * E + 2 * eN) * D, b + (size_t)(2 * E + 2 * N) * D, 4 * (size_t)nh * D) == 0);  // dt rows kept
                    CHECK(stddev(a + (size_t)2 * E * D, (size_t)2 * eN * D) == doctest::Approx(0.02).epsilon(0.1));  // B, C fresh
                } else if (ends("conv1d.weight")) {
                    CHECK(memcmp(a, b, 4 * (size_t)E * c.d_conv) == 0);
                    CHECK(stddev(a + (size_t)E * c.d_conv, (size_t)2 * eN * c.d_conv) == doctest::Approx(0.5 / sqrt(3.0)).epsilon(0.2));
                } else if (ends("mixer.norm.weight")) { for (size_t i = 0; i < t.size(); i++) CHECK(a[i] == 1.0f); }
                else if (ends("conv1d.bias")) {
                    CHECK(memcmp(a, b, 4 * (size_t)E) == 0);  // x channels kept
                    float most = 0;                           // B, C channels fresh: U(+-1/sqrt(W)), not the old values
                    for (int i = 0; i < 2 * eN; i++) most = std::max(most, fabsf(a[E + i]));
                    CHECK(most <= 1.0f / sqrtf((float)c.d_conv));
                    CHECK(stddev(a + E, (size_t)2 * eN) == doctest::Approx(1.0 / sqrt(3.0 * c.d_conv)).epsilon(0.3));
                    CHECK(memcmp(a + E, b + E, 4 * (size_t)2 * N) != 0);
                }
                // A_log and dt_bias re-drawn: in the new model's ranges, and not the old values
                else if (ends("mixer.A_log")) {
                    for (size_t i = 0; i < t.size(); i++) { CHECK(a[i] >= 0.0f); CHECK(a[i] <= logf(16.0f) + 1e-6f); }
                    CHECK(memcmp(a, b, 4 * t.size()) != 0);
                }
                else if (ends("mixer.dt_bias")) {
                    for (size_t i = 0; i < t.size(); i++) { float dt = softplusf(a[i]); CHECK(dt >= 0.999e-3f); CHECK(dt <= 0.1001f); }
                    CHECK(memcmp(a, b, 4 * t.size()) != 0);
                }
                else if (ends("norm.weight") || ends("mixer.D") || ends("out_proj.weight")) CHECK(memcmp(a, b, 4 * t.size()) == 0);
            }
        }
        cpu::model_free(&mi);
        cpu::model_free(&mo);
    }
}

TEST_CASE("statex: bad requests are refused with the reason") {
    Config c;
    float *p = nullptr, *pe = nullptr;
    REQUIRE(read_model_file("tests/refdata/mamba2_small.bin", &c, &p).empty());
    Config ce;
    CHECK(cpu::expand_model(&c, p, "copy", 1, 1, 1, &ce, &pe).find("at least 2") != std::string::npos);
    CHECK(cpu::expand_model(&c, p, "copy", 0, 2, 1, &ce, &pe).find("between 1 and n_layer") != std::string::npos);
    CHECK(cpu::expand_model(&c, p, "copy", 3, 2, 1, &ce, &pe).find("between 1 and n_layer") != std::string::npos);
    CHECK(cpu::expand_model(&c, p, "merge", 1, 2, 1, &ce, &pe).find("not one of Mamba2's") != std::string::npos);
    free(p);
    REQUIRE(read_model_file("tests/refdata/gla_small.bin", &c, &p).empty());
    CHECK(cpu::expand_model(&c, p, "grow", 1, 2, 1, &ce, &pe).find("not one of GLA's") != std::string::npos);
    CHECK(cpu::expand_model(&c, p, "bogus", 1, 2, 1, &ce, &pe).find("not one of GLA's") != std::string::npos);
    free(p);
}
