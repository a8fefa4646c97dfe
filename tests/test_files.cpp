// Model files and debug-state files: round trips, the reference files read and
// re-written byte for byte, and refusal of every kind of bad file.
#include "test_util.h"

static std::string tmp_path(const char *name) { return std::string("/tmp/statex_test_") + std::to_string(getpid()) + "_" + name; }

static void write_bytes(const std::string &path, const std::vector<char> &b) {
    FILE *f = fopen(path.c_str(), "wb");
    REQUIRE(f);
    if (!b.empty()) fwrite(b.data(), 1, b.size(), f);  // b.data() may be NULL: fwrite must not get it
    fclose(f);
}
static std::vector<char> bytes_of(const std::string &path) {
    std::vector<char> b;
    std::string e = read_file(path, &b);
    REQUIRE_MESSAGE(e.empty(), e);
    return b;
}
// The error reading `path` gives, or "" when it reads.
static std::string read_error(const std::string &path) {
    Config c;
    float *p = nullptr;
    std::string e = read_model_file(path, &c, &p);
    free(p);
    return e;
}

static Config small_gla() {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_GLA; c.vocab_size = 256; c.d_model = 16; c.n_layer = 3; c.tied = 0;
    c.key_dim = 8; c.value_dim = 12; c.gate_rank = 4; c.mlp_hidden = 24;
    c.n_head[0] = 2; c.n_head[1] = 1; c.n_head[2] = 4;
    return c;
}
static Config small_mamba2() {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_MAMBA2; c.vocab_size = 256; c.d_model = 16; c.n_layer = 2; c.tied = 1;
    c.d_inner = 32; c.headdim = 8; c.d_conv = 3;
    c.d_state[0] = 4; c.d_state[1] = 12;
    return c;
}

TEST_CASE("model file: round trip, both families, per-layer heads and states") {
    for (Config c : {small_gla(), small_mamba2()}) {
        Model m;
        cpu::model_init(&m, &c, nullptr);
        cpu::model_random_init(&m, 3);
        std::string path = tmp_path("roundtrip.bin");
        std::string e = write_model_file(path, &c, m.params);
        REQUIRE_MESSAGE(e.empty(), e);
        Config c2;
        float *p2 = nullptr;
        e = read_model_file(path, &c2, &p2);
        REQUIRE_MESSAGE(e.empty(), e);
        CHECK(memcmp(&c, &c2, sizeof c) == 0);
        CHECK(memcmp(m.params, p2, 4 * m.num_params) == 0);
        CHECK(bytes_of(path).size() == 1024 + 4 * m.num_params);
        free(p2);
        cpu::model_free(&m);
        remove(path.c_str());
    }
}

TEST_CASE("model file: the reference files read and write back byte for byte") {
    for (const char *name : {"gla_small.bin", "gla_small_merge_every1_out.bin", "mamba2_small.bin", "mamba2_small_copy_e4_every2_out.bin"}) {
        std::string path = std::string("tests/refdata/") + name;
        Config c;
        float *p = nullptr;
        std::string e = read_model_file(path, &c, &p);
        REQUIRE_MESSAGE(e.empty(), e);
        std::string out = tmp_path("rewrite.bin");
        e = write_model_file(out, &c, p);
        REQUIRE_MESSAGE(e.empty(), e);
        CHECK(bytes_of(out) == bytes_of(path));
        free(p);
        remove(out.c_str());
    }
}

TEST_CASE("model file: refusals name the file and the problem") {
    std::vector<char> good = bytes_of("tests/refdata/gla_small.bin");
    std::string path = tmp_path("bad.bin");
    auto refused = [&](const std::vector<char> &b, const char *why) {
        write_bytes(path, b);
        std::string e = read_error(path);
        CAPTURE(why);
        CAPTURE(e);
        CHECK(!e.empty());
        CHECK(e.find(path) != std::string::npos);  // names the file
        CHECK(e.find(why) != std::string::npos);   // and the problem
    };
    refused(std::vector<char>(good.begin(), good.end() - 4), "truncated");
    refused(std::vector<char>(good.begin(), good.begin() + 100), "truncated");
    refused({}, "truncated");
    std::vector<char> b = good;
    b.push_back(0);
    refused(b, "trailing bytes");
    b = good; b[0] ^= 1;
    refused(b, "bad magic");
    b = good; b[4] = 2;
    refused(b, "version");
    b = good; int32_t d = 65; memcpy(&b[4 * 4], &d, 4);  // d_model 64 -> 65: the sizes no longer match the length
    refused(b, "truncated");
    b = good; int32_t heads = 3; memcpy(&b[4 * 64], &heads, 4);  // 3 heads do not divide K = 32
    refused(b, "head count");
    b = good; int32_t junk = 7; memcpy(&b[4 * 20], &junk, 4);  // a reserved header entry
    refused(b, "must be 0");
    b = good; int32_t fam = 3; memcpy(&b[4 * 2], &fam, 4);
    refused(b, "family");
    b = good; int32_t layers = 0; memcpy(&b[4 * 5], &layers, 4);
    refused(b, "n_layer");
    std::string e = read_error(tmp_path("does_not_exist.bin"));
    CHECK(e.find("cannot open") != std::string::npos);
    remove(path.c_str());
}

TEST_CASE("debug state: round trip and refusals") {
    DebugState s;
    std::string e = read_debug_state("tests/refdata/mamba2_small.state.bin", &s);
    REQUIRE_MESSAGE(e.empty(), e);
    CHECK(s.B == 2);
    CHECK(s.T == 67);
    std::string path = tmp_path("state.bin");
    e = write_debug_state(path, &s);
    REQUIRE_MESSAGE(e.empty(), e);
    CHECK(bytes_of(path) == bytes_of("tests/refdata/mamba2_small.state.bin"));
    std::vector<char> b = bytes_of(path);
    b.pop_back();
    write_bytes(path, b);
    DebugState t;
    e = read_debug_state(path, &t);
    CHECK(e.find("bytes, but its header needs") != std::string::npos);
    e = read_debug_state("tests/refdata/gla_small.bin", &t);  // a model file is not a debug state
    CHECK(e.find("bad magic") != std::string::npos);
    remove(path.c_str());
}

TEST_CASE("atomic write: a failed write leaves the old file alone") {
    std::string path = tmp_path("atomic.bin");
    const char first[] = "first";
    REQUIRE(write_file_atomic(path, {{first, 5}}).empty());
    // a directory in place of the temporary file makes the write fail
    std::string tmp = path + ".tmp";
    REQUIRE(mkdir(tmp.c_str(), 0755) == 0);
    const char second[] = "second";
    std::string e = write_file_atomic(path, {{second, 6}});
    CHECK(!e.empty());
    std::vector<char> b = bytes_of(path);
    CHECK(std::string(b.begin(), b.end()) == "first");
    rmdir(tmp.c_str());
    remove(path.c_str());
}
