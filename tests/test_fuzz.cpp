// Fuzzing the readers. Seeded mutants of a model file, an optimizer-state file
// and a debug-state file go through the readers the binaries use
// (read_model_file: --init, --resume, --model; read_opt_file: --resume;
// read_debug_state: --debug-state), and a few dozen through the binaries
// themselves. Mutations: truncation, appended bytes, bit flips, header fields
// set to 0, -1, INT_MAX or INT_MIN, bad per-layer sizes, NaN and infinities.
// Nothing may crash (`make sanitize` runs this under ASan and UBSan), anything
// accepted must be exactly what the writer makes of what was read (so nothing
// was ignored), and the mutations that always break a file must be refused.
// STATEX_FUZZ_SCALE=K runs K times as many mutants (default 1: about 6000).
#include "test_util.h"
#include <climits>

static std::string fuzz_dir() {
    std::string d = "/tmp/statex_fuzz_" + std::to_string(getpid());
    mkdir(d.c_str(), 0755);
    return d;
}
static void put_file(const std::string &path, const std::vector<char> &b) {  // no fsync: thousands of these
    FILE *f = fopen(path.c_str(), "wb");
    REQUIRE(f);
    if (!b.empty()) REQUIRE(fwrite(b.data(), 1, b.size(), f) == b.size());
    fclose(f);
}
static std::vector<char> get_file(const std::string &path) {
    std::vector<char> b;
    std::string e = read_file(path, &b);
    REQUIRE_MESSAGE(e.empty(), e);
    return b;
}
static int fuzz_scale() {
    const char *s = getenv("STATEX_FUZZ_SCALE");
    return s && atoi(s) > 0 ? atoi(s) : 1;
}

// What a mutant did: `always_bad` when no reader may accept it.
struct Mutant {
    std::vector<char> bytes;
    std::string what;
    bool always_bad;
};

// One mutant of `good`. Header int32 fields are [0, header_ints); the per-layer
// fields [layer_lo, layer_hi); float32 payload regions where NaN/Inf must be
// refused are given as [offset, end) byte ranges.
static Mutant mutate(const std::vector<char> &good, Rng *r, int header_ints, int layer_lo, int layer_hi,
                     const std::vector<std::pair<size_t, size_t>> &finite_ranges) {
    Mutant m{good, "", false};
    auto set_int = [&](size_t at, int32_t v) { memcpy(&m.bytes[at], &v, 4); };
    const int32_t specials[] = {0, -1, INT_MAX, INT_MIN};
    switch (rng_int(r, 8)) {
    case 0: {  // truncation, anywhere (often inside the header)
        size_t n = rng_int(r, 2) ? rng_u64(r) % good.size() : good.size() - 1 - rng_u64(r) % std::min<size_t>(good.size(), 64);
        m.bytes.resize(n);
        m.what = strf("truncated to %zu", n);
        m.always_bad = true;
        break;
    }
    case 1: {  // appended bytes
        int n = 1 + rng_int(r, 64);
        for (int i = 0; i < n; i++) m.bytes.push_back((char)rng_int(r, 256));
        m.what = strf("%d bytes appended", n);
        m.always_bad = true;
        break;
    }
    case 2: case 3: {  // bit flips: 1 to 4, in the header half the time
        int n = 1 + rng_int(r, 4);
        bool head = rng_int(r, 2);
        for (int i = 0; i < n; i++) {
            size_t at = head ? rng_u64(r) % (4 * (size_t)header_ints) : rng_u64(r) % good.size();
            m.bytes[at] ^= (char)(1 << rng_int(r, 8));
        }
        m.what = strf("%d bit flips%s", n, head ? " in the header" : "");
        break;
    }
    case 4: {  // a header field set to 0, -1, INT_MAX or INT_MIN
        int f = rng_int(r, header_ints);
        int32_t v = specials[rng_int(r, 4)];
        set_int(4 * f, v);
        m.what = strf("header field %d = %d", f, v);
        m.always_bad = m.bytes != good;
        break;
    }
    case 5: {  // a per-layer size: nonsense, or plausible but wrong
        if (layer_hi <= layer_lo) return mutate(good, r, header_ints, layer_lo, layer_hi, finite_ranges);
        int f = layer_lo + rng_int(r, layer_hi - layer_lo);
        const int32_t vals[] = {0, -1, 3, 5, 7, 64, 1000, 1 << 20, INT_MAX};
        int32_t v = vals[rng_int(r, 9)];
        set_int(4 * f, v);
        m.what = strf("per-layer field %d = %d", f, v);
        m.always_bad = m.bytes != good;
        break;
    }
    default: {  // a NaN or an infinity in the values
        auto range = finite_ranges[rng_int(r, (int)finite_ranges.size())];
        size_t at = range.first + 4 * (rng_u64(r) % ((range.second - range.first) / 4));
        const float vals[] = {NAN, INFINITY, -INFINITY};
        float v = vals[rng_int(r, 3)];
        memcpy(&m.bytes[at], &v, 4);
        m.what = strf("%g at byte %zu", v, at);
        m.always_bad = true;
        break;
    }
    }
    return m;
}

static Config fuzz_gla() {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_GLA; c.vocab_size = 256; c.d_model = 8; c.n_layer = 3; c.tied = 0;
    c.key_dim = 8; c.value_dim = 12; c.gate_rank = 4; c.mlp_hidden = 16;
    c.n_head[0] = 2; c.n_head[1] = 1; c.n_head[2] = 4;
    return c;
}
static Config fuzz_mamba2() {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_MAMBA2; c.vocab_size = 256; c.d_model = 8; c.n_layer = 2; c.tied = 1;
    c.d_inner = 16; c.headdim = 8; c.d_conv = 3;
    c.d_state[0] = 4; c.d_state[1] = 6;
    return c;
}
static std::vector<float> random_floats(size_t n, Rng *r, bool positive = false) {
    std::vector<float> v(n);
    for (float &x : v) x = positive ? fabsf(rng_normal(r)) * 1e-3f : 0.02f * rng_normal(r);
    return v;
}

TEST_CASE("fuzz: model files (the reader of --init, --resume and --model)") {
    std::string d = fuzz_dir(), path = d + "/m.bin";
    Rng r = {20250926};
    int accepted = 0, total = 0, n = 1500 * fuzz_scale();
    for (Config c : {fuzz_gla(), fuzz_mamba2()}) {
        size_t np = num_params_of(&c);
        std::vector<float> p = random_floats(np, &r);
        REQUIRE(write_model_file(path, &c, p.data()).empty());
        std::vector<char> good = get_file(path);
        for (int i = 0; i < n; i++) {
            Mutant m = mutate(good, &r, 64, 64, 64 + c.n_layer, {{1024, good.size()}});
            put_file(path, m.bytes);
            Config c2;
            float *p2 = nullptr;
            std::string e = read_model_file(path, &c2, &p2);
            total++;
            CAPTURE(m.what);
            if (!e.empty()) { CHECK(p2 == nullptr); continue; }
            accepted++;
            CHECK_FALSE(m.always_bad);
            CHECK(config_problem(&c2).empty());
            CHECK(nonfinite_problem(&c2, p2).empty());
            std::string back = d + "/back.bin";
            REQUIRE(write_model_file(back, &c2, p2).empty());
            CHECK(get_file(back) == m.bytes);  // nothing in the file was ignored
            free(p2);
        }
    }
    MESSAGE("model-file mutants: " << total << ", accepted " << accepted << " (changed parameters only)");
    CHECK(accepted < total / 4);
    (void)system(("rm -rf " + d).c_str());
}

TEST_CASE("fuzz: optimizer-state files (the reader of --resume)") {
    std::string d = fuzz_dir(), path = d + "/m.bin.opt";
    Rng r = {20250928};
    Config c = fuzz_gla();
    size_t np = num_params_of(&c);
    std::vector<float> p = random_floats(np, &r), am = random_floats(np, &r), av = random_floats(np, &r, true);
    History h;
    int step = 5;
    for (int i = 1; i <= step; i++) { h.step.push_back(i); h.train_loss.push_back(5.0f - 0.1f * i); h.val_bpb.push_back(i % 2 ? NAN : 7.0f); }
    std::vector<std::string> flags = {"--family", "gla", "--steps", "10", "--seed", "3"};
    REQUIRE(write_opt_file(path, step, flags, p.data(), am.data(), av.data(), np, &h).empty());
    std::vector<char> good = get_file(path);
    size_t flag_bytes = 0;
    for (auto &f : flags) flag_bytes += f.size() + 1;
    size_t moments = 32 + flag_bytes, nh_at = moments + 8 * np;
    int accepted = 0, total = 0, n = 2000 * fuzz_scale();
    for (int i = 0; i < n; i++) {
        Mutant m;
        if (rng_int(&r, 8) == 0) {  // the history count or the step: 0, -1, INT_MAX, INT_MIN, -1000
            m = {good, "", true};
            const int32_t vals[] = {0, -1, INT_MAX, INT_MIN, -1000, step + 1};
            int32_t v = vals[rng_int(&r, 6)];
            size_t at = rng_int(&r, 2) ? nh_at : 8;
            memcpy(&m.bytes[at], &v, 4);
            m.what = strf("%s = %d", at == 8 ? "step" : "history count", v);
        } else {
            // header: 4 int32 then 2 uint64 (as 4 more int32 fields); NaN/Inf in m and v must be refused
            m = mutate(good, &r, 8, 0, 0, {{moments, nh_at}});
        }
        put_file(path, m.bytes);
        OptState s;
        std::string e = read_opt_file(path, p.data(), np, &s);
        total++;
        CAPTURE(m.what);
        if (!e.empty()) continue;
        accepted++;
        CHECK_FALSE(m.always_bad);
        CHECK(s.step >= 1);
        std::string back = d + "/back.opt";
        REQUIRE(write_opt_file(back, s.step, s.flags, p.data(), s.m.data(), s.v.data(), np, &s.history).empty());
        CHECK(get_file(back) == m.bytes);
    }
    MESSAGE(".opt mutants: " << total << ", accepted " << accepted << " (changed moments, flags or losses only)");
    CHECK(accepted < total / 4);
    (void)system(("rm -rf " + d).c_str());
}

TEST_CASE("fuzz: debug-state files (the reader of --debug-state)") {
    std::string d = fuzz_dir(), path = d + "/s.bin";
    std::vector<char> good = get_file("tests/refdata/mamba2_small.state.bin");
    DebugState ref;
    REQUIRE(read_debug_state("tests/refdata/mamba2_small.state.bin", &ref).empty());
    size_t BT = (size_t)ref.B * ref.T, logits_at = 1024 + 8 * BT;
    Rng r = {20250927};
    int accepted = 0, total = 0, n = 1000 * fuzz_scale();
    for (int i = 0; i < n; i++) {
        Mutant m;
        if (rng_int(&r, 8) == 0) {  // a token id outside the vocabulary
            m = {good, "", true};
            const int32_t vals[] = {-2, 256, INT_MAX, INT_MIN};
            int32_t v = vals[rng_int(&r, 4)];
            size_t at = 1024 + 4 * (rng_u64(&r) % (2 * BT));
            if (v == -2 && at < 1024 + 4 * BT) v = -1;  // an input of -1 is as bad
            memcpy(&m.bytes[at], &v, 4);
            m.what = strf("token %d at byte %zu", v, at);
        } else {
            m = mutate(good, &r, 8, 0, 0, {{logits_at, good.size()}});
        }
        put_file(path, m.bytes);
        DebugState s;
        std::string e = read_debug_state(path, &s);
        total++;
        CAPTURE(m.what);
        if (!e.empty()) continue;
        accepted++;
        CHECK_FALSE(m.always_bad);
        std::string back = d + "/back.bin";
        REQUIRE(write_debug_state(back, &s).empty());
        CHECK(get_file(back) == m.bytes);
    }
    MESSAGE("debug-state mutants: " << total << ", accepted " << accepted);
    CHECK(accepted < total / 4);
    (void)system(("rm -rf " + d).c_str());
}

// The binaries: exit status 1 with "error: " and the file's name, never a
// crash, never a sanitizer report.
static int run_tool(const std::string &cmd, std::string *out) {
    FILE *p = popen((cmd + " 2>&1").c_str(), "r");
    REQUIRE(p);
    char buf[4096];
    size_t n;
    out->clear();
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_CASE("fuzz: bad files through ./train --init, --resume, --debug-state and ./infer --model") {
    std::string d = fuzz_dir(), out;
    Rng r = {7};
    Config c = fuzz_gla();
    size_t np = num_params_of(&c);
    std::vector<float> p = random_floats(np, &r), am = random_floats(np, &r), av = random_floats(np, &r, true);
    std::string model = d + "/ck.bin";
    REQUIRE(write_model_file(model, &c, p.data()).empty());
    std::vector<char> good_model = get_file(model);
    History h;
    for (int i = 1; i <= 2; i++) { h.step.push_back(i); h.train_loss.push_back(5.0f); h.val_bpb.push_back(NAN); }
    std::vector<std::string> flags = {"--steps", "3", "--batch", "1", "--seq-len", "16"};
    REQUIRE(write_opt_file(model + ".opt", 2, flags, p.data(), am.data(), av.data(), np, &h).empty());
    size_t moments = 32;
    for (auto &f : flags) moments += f.size() + 1;
    std::vector<char> good_opt = get_file(model + ".opt");
    std::vector<char> good_state = get_file("tests/refdata/gla_small.state.bin");
    int runs = 0;
    for (int i = 0; i < 12; i++) {
        struct { std::string file, cmd; const std::vector<char> *good; int header_ints, layers; size_t lo, hi; } cases[] = {
            {d + "/init.bin", "./train --init " + d + "/init.bin --steps 1 --batch 1 --seq-len 8 --out " + d + "/o.bin", &good_model, 64, c.n_layer, 1024, good_model.size()},
            {d + "/gen.bin", "./infer --model " + d + "/gen.bin --prompt x --max-tokens 1", &good_model, 64, c.n_layer, 1024, good_model.size()},
            {model + ".opt", "./train --resume " + model + " --quiet", &good_opt, 8, 0, moments, moments + 8 * np},
            {d + "/st.bin", "./train --init tests/refdata/gla_small.bin --debug-state " + d + "/st.bin --dump-state " + d + "/o.state", &good_state, 8, 0, 1024 + 8 * 2 * 67, good_state.size()},
        };
        for (auto &k : cases) {
            Mutant m;
            do m = mutate(*k.good, &r, k.header_ints, 64, 64 + k.layers, {{k.lo, k.hi}});
            while (!m.always_bad);
            put_file(k.file, m.bytes);
            int rc = run_tool(k.cmd, &out);
            runs++;
            CAPTURE(k.cmd); CAPTURE(m.what); CAPTURE(out);
            CHECK(rc == 1);
            CHECK(out.find("error: ") != std::string::npos);
            CHECK(out.find(k.file) != std::string::npos);
            CHECK(out.find("Sanitizer") == std::string::npos);
            CHECK(out.find("runtime error") == std::string::npos);
        }
        put_file(model + ".opt", good_opt);
    }
    MESSAGE("bad files through the binaries: " << runs << " runs");
    (void)system(("rm -rf " + d).c_str());
}
