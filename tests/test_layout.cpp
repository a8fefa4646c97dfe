// The layouts of model.h: every buffer is as large as what is written into it,
// and a batch or a recurrent state that does not fit is refused by the check
// that both backends' model_forward run before the shared passes.
#include "test_util.h"
#include <sys/wait.h>

// A GLA config with every size given, one head per layer.
static Config gla_config(int D, int K, int V, int r, int F, int H) {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_GLA; c.vocab_size = 256; c.d_model = D; c.n_layer = 2; c.tied = 1;
    c.key_dim = K; c.value_dim = V; c.gate_rank = r; c.mlp_hidden = F;
    c.n_head[0] = H; c.n_head[1] = 1;
    return c;
}
static Config mamba2_config(int D, int E, int P, int N0, int N1, int W) {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_MAMBA2; c.vocab_size = 256; c.d_model = D; c.n_layer = 2; c.tied = 1;
    c.d_inner = E; c.headdim = P; c.d_conv = W; c.d_state[0] = N0; c.d_state[1] = N1;
    return c;
}

// The widest row any backward op writes into one of the nine shared row
// buffers, listed from the op calls of the backward passes in model.h.
static size_t widest_row(const Config *c) {
    size_t w = c->d_model;  // d final_out, d attn_in, d mlp_in, d norm_out
    for (int l = 0; l < c->n_layer; l++) {
        if (c->family == FAMILY_GLA)
            w = std::max({w, (size_t)c->key_dim, (size_t)c->value_dim, (size_t)c->gate_rank, (size_t)c->mlp_hidden});
        else
            w = std::max({w, (size_t)c->d_inner, (size_t)m2_in_dim(c, l), (size_t)m2_conv_dim(c, l),
                          (size_t)m2_nheads(c)});
    }
    return w;
}

TEST_CASE("layout: the backward row buffers hold what is written into them") {
    // each config makes a different size the widest; the gate rank above every
    // other size is the one the first version missed
    Config configs[] = {gla_config(32, 32, 32, 4096, 64, 1), gla_config(256, 16, 32, 4, 8, 2),
                        gla_config(16, 512, 32, 4, 64, 4), gla_config(16, 32, 768, 4, 64, 8),
                        gla_config(16, 32, 32, 4, 2048, 2), mamba2_config(32, 64, 16, 8, 512, 4),
                        mamba2_config(512, 32, 8, 4, 4, 2), mamba2_config(16, 256, 32, 16, 16, 4)};
    for (const Config &c : configs) {
        REQUIRE(config_problem(&c) == "");
        int B = 2, T = 70, n_tasks = 3;
        size_t work = cpu::scan_work_floats(&c);
        Acts a;
        float *base = (float *)4096;  // only the pointers' distances are read
        acts_layout(&c, B, T, n_tasks, work, false, base, &a);
        size_t BT = (size_t)B * T, row = widest_row(&c);
        CAPTURE(c.family);
        CAPTURE(row);
        for (int i = 0; i + 1 < 9; i++) CHECK((size_t)(a.drows[i + 1] - a.drows[i]) >= BT * row);
        CHECK((size_t)(a.dlogits - a.drows[8]) >= BT * row);
        // (that the scans stay inside scan_work_floats is checked where they run,
        // with a canary after each thread's slice: test_ops.cpp, check_canaries)
    }
}

TEST_CASE("layout: GLA keeps a chunk state per 64 tokens, plus the initial and the final state") {
    Config c = gla_config(32, 16, 24, 4, 64, 2);  // layer 0 has 2 heads, layer 1 one
    int B = 3;
    for (int T : {1, 16, 63, 64, 65, 130, 2048}) {
        Acts a;
        float *base = (float *)4096;  // only the pointers' distances are read
        acts_layout(&c, B, T, 1, cpu::scan_work_floats(&c), false, base, &a);
        size_t slots = (T + 63) / 64 + 1;  // ceil(T / 64), + the final state; one per 16 tokens was ceil(T / 16) + 1
        CAPTURE(T);
        CHECK(gla_state_slots(T) == (int)slots);
        for (int l = 0; l < c.n_layer; l++) {
            size_t S_floats = (size_t)B * slots * c.key_dim * c.value_dim / c.n_head[l];
            CAPTURE(l);
            // without keep_steps the layer's S is followed by res_mid (rounded up to 16 floats)
            CHECK((size_t)(a.layer[l].res_mid - a.layer[l].S) == ((S_floats + 15) & ~(size_t)15));
        }
    }
    CHECK(gla_state_slots(2048) == 33);  // was 129 with a state every 16 tokens
}

TEST_CASE("layout: the section-7 config of the tutorial issue trains (gate rank above every other size)") {
    Config c = gla_config(32, 32, 32, 4096, 64, 1);
    c.n_layer = 1;
    Model m;
    cpu::model_init(&m, &c, cpu::random_params(&c, 3));
    cpu::model_alloc_acts(&m, 2, 64);
    std::vector<int> in(128), tg(128);
    for (int i = 0; i < 128; i++) { in[i] = (i * 7) % 256; tg[i] = (i * 11) % 256; }
    cpu::model_zero_grad(&m);
    cpu::model_forward(&m, in.data(), tg.data(), 2, 64);
    cpu::model_backward(&m);
    CHECK(std::isfinite(m.loss));
    CHECK(std::isfinite(cpu::model_grad_norm(&m)));
    cpu::model_free(&m);
}

// Runs f in a child process; returns its exit status (model_forward dies with
// a message, exit status 1, on a batch that does not fit). f must not start
// OpenMP threads: a forked child cannot use the parent's thread pool.
template <typename F> static int exit_status_of(F f) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        f();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TEST_CASE("layout: a recurrent state with fewer sequences than the batch is refused (both backends share the check)") {
    Config c = mamba2_config(16, 32, 8, 4, 8, 4);
    Model m;
    cpu::model_init(&m, &c, cpu::random_params(&c, 1));
    cpu::model_alloc_acts(&m, 4, 8);
    RecState short_state;
    cpu::state_alloc(&c, 2, &short_state);  // room for 2 sequences, the batch has 4
    std::vector<int> in(32, 65);
    // the check itself, as gpu::model_forward runs it too
    CHECK(forward_problem(&m, 4, 8, &short_state).find("recurrent state holds 2 sequences") != std::string::npos);
    CHECK(forward_problem(&m, 2, 8, &short_state) == "");
    CHECK(forward_problem(&m, 4, 9, nullptr) != "");   // longer than allocated
    CHECK(forward_problem(&m, 5, 8, nullptr) != "");   // more sequences than allocated
    CHECK(forward_problem(&m, 0, 8, nullptr) != "");   // empty
    // and the CPU model_forward really stops on it, before reading the state
    CHECK(exit_status_of([&] { cpu::model_forward(&m, in.data(), nullptr, 4, 8, &short_state); }) == 1);
    cpu::model_forward(&m, in.data(), nullptr, 2, 8, &short_state);  // a batch that fits runs (in this process:
    CHECK(std::isfinite(m.acts.logits[0]));                            // OpenMP threads do not survive a fork)
    cpu::state_free(&short_state);
    cpu::model_free(&m);
}
