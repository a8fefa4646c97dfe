// Reliability of the command-line tools: a table of bad command lines and bad
// data, each refused with one error line that names the flag or file, and
// nothing overwritten; the checkpoint pair, its lock and its recovery; kill -9
// at random moments (tests/kill_test.sh); and the property that a resumed run
// ends bit for bit where an uninterrupted one does, for randomly drawn flag
// mixes and under different malloc settings.
#include "test_util.h"
#include <climits>
#include <sstream>
#include <fstream>
#include <csignal>
#include <sys/wait.h>

// run_command (test_util.h), and a sanitizer report in the output fails the test.
static int run(const std::string &cmd, std::string *out = nullptr) {
    std::string text;
    int status = run_command(cmd, &text);
    CAPTURE(cmd);
    CAPTURE(text);
    CHECK(text.find("Sanitizer") == std::string::npos);
    CHECK(text.find("runtime error") == std::string::npos);
    if (out) *out = text;
    return status;
}
static std::string tmpdir(const char *name) {
    std::string d = std::string("/tmp/statex_rel_") + name + "_" + std::to_string(getpid());
    (void)system(("rm -rf " + d + " && mkdir -p " + d).c_str());
    return d;
}
static std::vector<char> bytes(const std::string &path) {
    std::vector<char> b;
    read_file(path, &b);
    return b;
}
static bool exists(const std::string &path) {
    struct stat st;
    return stat(path.c_str(), &st) == 0;
}
static int count(const std::string &s, const std::string &what) {
    int n = 0;
    for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) n++;
    return n;
}
// the files in a directory, one string
static std::string listing(const std::string &d) {
    std::string out;
    run("ls -A " + d, &out);
    return out;
}

static const char *TINY_GLA = "--family gla --d-model 32 --n-layer 2 --key-dim 16 --value-dim 32 --heads 2 --gate-rank 4 --mlp-hidden 64";
static const char *TINY_M2 = "--family mamba2 --d-model 32 --n-layer 2 --d-inner 64 --headdim 16 --d-state 8 --d-conv 4";

// A small GLA model file with the given vocabulary, and optionally a NaN in a tensor.
static std::string small_model(const std::string &path, int vocab, bool nan) {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_GLA; c.vocab_size = vocab; c.d_model = 8; c.n_layer = 1; c.tied = 1;
    c.key_dim = 8; c.value_dim = 8; c.gate_rank = 2; c.mlp_hidden = 8; c.n_head[0] = 2;
    std::vector<float> p(num_params_of(&c), 0.01f);
    if (nan) p[param_layout(&c)[3].offset + 5] = NAN;  // in layers.0.attn.k_proj.weight
    int32_t h[256];
    config_to_header(&c, h);  // written raw: the writer would be right to refuse nothing here
    REQUIRE(write_file_atomic(path, {{h, sizeof h}, {p.data(), 4 * p.size()}}).empty());
    return path;
}

TEST_CASE("bad input matrix: each bad flag or file gives one error line naming it, and overwrites nothing") {
    std::string d = tmpdir("matrix"), out;
    std::string keep = d + "/keep.bin";
    const char sentinel[] = "do not touch";
    REQUIRE(write_file_atomic(keep, {{sentinel, sizeof sentinel}}).empty());
    std::string train = std::string("./train ") + TINY_GLA + " --steps 2 --batch 1 --seq-len 16 --out " + keep;
    // a checkpoint to resume, and variants of its .opt
    std::string ck = d + "/ck.bin";
    REQUIRE_MESSAGE(run(std::string("./train ") + TINY_GLA + " --steps 2 --batch 1 --seq-len 16 --quiet --out " + ck, &out) == 0, out);
    std::vector<char> opt = bytes(ck + ".opt");
    auto opt_variant = [&](const std::string &name, size_t at, int32_t v) {
        std::vector<char> b = opt;
        memcpy(&b[at], &v, 4);
        REQUIRE(write_file_atomic(d + "/" + name, {{b.data(), b.size()}}).empty());
        return d + "/" + name;
    };
    auto pair_with_opt = [&](const std::string &name, const std::vector<char> &o) {  // ck.bin's model, this .opt
        std::string p = d + "/" + name;
        run("cp " + ck + " " + p);
        REQUIRE(write_file_atomic(p + ".opt", {{o.data(), o.size()}}).empty());
        return p;
    };
    std::string step_bad = opt_variant("step.opt", 8, -1000);
    pair_with_opt("negstep.bin", bytes(step_bad));
    // stored flags, rewritten: a bad value; a flag that does not define a run
    Config cc;
    float *cp = nullptr;
    REQUIRE(read_model_file(ck, &cc, &cp).empty());
    OptState os;
    REQUIRE(read_opt_file(ck + ".opt", cp, num_params_of(&cc), &os).empty());
    REQUIRE(write_opt_file(d + "/flags.bin.opt", os.step, {"--steps", "abc"}, cp, os.m.data(), os.v.data(), num_params_of(&cc), &os.history).empty());
    REQUIRE(write_opt_file(d + "/outflag.bin.opt", os.step, {"--steps", "4", "--out", keep}, cp, os.m.data(), os.v.data(), num_params_of(&cc), &os.history).empty());
    std::vector<float> mnan = os.m;
    mnan[7] = NAN;
    REQUIRE(write_opt_file(d + "/mnan.bin.opt", os.step, os.flags, cp, mnan.data(), os.v.data(), num_params_of(&cc), &os.history).empty());
    free(cp);
    for (const char *n : {"flags.bin", "outflag.bin", "mnan.bin"}) run("cp " + ck + " " + d + "/" + n);
    // a checkpoint whose .opt belongs to another moment
    run("cp " + ck + ".opt " + d + "/other.bin.opt && cp tests/refdata/gla_small.bin " + d + "/other.bin");
    // data cases
    run("mkfifo " + d + "/fifo && mkdir " + d + "/dir && echo x > " + d + "/file.txt && head -c 4096 data/val.txt > " + d + "/val4096.txt");
    run("head -c 100 data/val.txt > " + d + "/short.txt && head -c 300 data/val.txt > " + d + "/prompt.txt");
    small_model(d + "/vocab1.bin", 1, false);
    small_model(d + "/nan.bin", 256, true);

    struct Case { std::string cmd, why; } cases[] = {
        // flags
        {train + " --steps -5", "--steps -5 must be >= 0"},
        {train + " --weight-decay -1", "--weight-decay -1 must be >= 0"},
        {train + " --save-every -5", "--save-every -5 must be >= 0"},
        {train + " --eval-every -5", "--eval-every -5 must be >= 0"},
        {train + " --stop-at -1", "--stop-at -1 must be >= 0"},
        {train + " --expand-every 1", "--expand-every needs --expand"},
        {"./train --resume " + ck + " --expand merge --expand-every 1 --out " + keep, "--expand: not with --resume"},
        {"./train --resume " + ck + " --d-model 64 --out " + keep, "--d-model: not with --resume"},
        {train + " --steps 0", "--steps must be positive"},
        {train + " --lr 0", "--lr must be positive"},
        {train + " --lr nan", "--lr: 'nan' is not a number"},
        {train + " --batch 0", "--batch 0 must be between"},
        {train + " --seq-len 0", "--seq-len 0 must be between"},
        {train + " --eval-rows 0", "--eval-rows must be >= 1"},
        {train + " --warmup -1", "--warmup must be >= 0"},
        {train + " --grad-clip -1", "--grad-clip must be >= 0"},
        {train + " --min-lr-frac 2", "--min-lr-frac must be between"},
        {train + " --recall-frac 2", "--recall-frac and --passkey-share"},
        {train + " --mqar-min 0", "--mqar-min"},
        {train + " --mqar-gap -1", "--mqar-gap must be >= 0"},
        {train + " --expand-every -1", "--expand-every -1 must be >= 0"},
        {train + " --steps 99999999999", "'99999999999' is not an integer"},
        {train + " --heads 1,x", "--heads: 'x' is not an integer"},
        {train + " --d-state 16,", "--d-state: '' is not an integer"},
        {train + " --device tpu", "--device: 'tpu' is not cpu or cuda"},
        {train + " --gate-rank 0", "gate_rank 0 out of range"},
        {train + " --family gla --expand merge --expand-every 1", "--expand needs --init"},
        {train + " --steps", "--steps needs a value"},
        // --out
        {train + " --out " + d + "/dir", "is a directory"},
        {train + " --out " + d + "/", "must name a file"},
        {train + " --out " + d + "/file.txt/m.bin", "cannot create"},
        // files: data, models, checkpoints
        {train + " --data " + d + "/fifo", "not a regular file"},
        {train + " --data " + d + "/dir", "not a regular file"},
        {train + " --data " + d + "/short.txt --seq-len 200", "fewer than the 201"},
        {train + " --val " + d + "/missing.txt", "--val: cannot open"},
        {"./train --init " + d + "/fifo --steps 1 --out " + keep, "not a regular file"},
        {"./train --init " + d + "/vocab1.bin --steps 1 --out " + keep, "vocab_size 1 out of range"},
        {"./train --init " + d + "/nan.bin --steps 1 --out " + keep, "tensor layers.0.attn.k_proj.weight holds NaN"},
        {"./train --resume " + d + "/negstep.bin --out " + keep, "step -1000 out of range"},
        {"./train --resume " + d + "/flags.bin --out " + keep, "flags.bin.opt: stored flags: --steps: 'abc' is not an integer"},
        {"./train --resume " + d + "/outflag.bin --out " + keep, "do not define a run"},
        {"./train --resume " + d + "/mnan.bin --out " + keep, "moment 7 is not finite"},
        {"./train --resume " + d + "/other.bin --out " + keep, "parameters, the model file"},
        {"./train --resume " + d + "/missing.bin --out " + keep, "cannot open"},
        {"./train --init tests/refdata/gla_small.bin --debug-state " + d + "/fifo --dump-state " + keep, "not a regular file"},
        // infer
        {"./infer --model " + d + "/vocab1.bin --prompt The", "vocab_size 1 out of range"},
        {"./infer --model " + d + "/nan.bin --prompt The", "holds NaN"},
        {"./infer --model " + d + "/fifo", "not a regular file"},
        {"./infer --model tests/refdata/gla_small.bin --eval --passkey-min 50", "--passkey-min 50: a passkey prompt needs"},
        {"./infer --model tests/refdata/gla_small.bin --eval --passkey-min 512 --passkey-max 256", "is below --passkey-min"},
        {"./infer --model tests/refdata/gla_small.bin --prompt-file " + d + "/fifo", "--prompt-file"},
        {"./infer --model tests/refdata/gla_small.bin --prompt-file " + d + "/prompt.txt --max-prompt 200", "more than --max-prompt 200 allows"},
        {"./infer --model tests/refdata/gla_small.bin --eval --val " + d + "/val4096.txt --mqar-gap 4096", "fewer than the 4097"},
        {"./infer --model tests/refdata/gla_small.bin --top-k -1", "--top-k must be >= 0"},
    };
    for (const Case &k : cases) {
        int rc = run(k.cmd, &out);
        CAPTURE(k.cmd);
        CAPTURE(out);
        CHECK(rc == 1);
        CHECK(count(out, "error: ") == 1);
        CHECK(out.find(k.why) != std::string::npos);
        std::vector<char> b = bytes(keep);
        CHECK(std::string(b.begin(), b.end() - 1) == sentinel);
        CHECK_FALSE(exists(keep + ".opt"));
        CHECK_FALSE(exists(keep + ".png"));
        CHECK_FALSE(exists(keep + ".lock"));
    }
    CHECK(bytes(ck + ".opt") == opt);  // the checkpoint resumed by bad command lines is untouched
    MESSAGE("bad-input cases: " << sizeof cases / sizeof cases[0]);
    run("rm -rf " + d);
}

// --bench with size flags times the model those flags build, at --batch and
// --seq-len; a model they cannot build is refused by name, as a run refuses it.
TEST_CASE("bench: size flags, --batch and --seq-len choose what is timed") {
    std::string out;
    REQUIRE_MESSAGE(run(std::string("./train --bench ") + TINY_GLA + " --batch 2 --seq-len 32", &out) == 0, out);
    CHECK_MESSAGE(out.find("custom        train B 2 T 32:") != std::string::npos, out);
    REQUIRE_MESSAGE(run("./train --bench --preset tiny-gla --n-layer 1 --batch 3", &out) == 0, out);
    CHECK_MESSAGE(out.find("tiny-gla*     train B 3 T 512:") != std::string::npos, out);
    CHECK_MESSAGE(out.find("params 0.") != std::string::npos, out);  // one layer of tiny-gla's 1.84M
    CHECK(run("./train --bench --preset tiny-gla --key-dim 97", &out) == 1);
    CHECK_MESSAGE(out.find("error: model config: layer 0: head count 2 must be >= 1 and divide key_dim 97") != std::string::npos, out);
}

// --profile over a decode step: every thread runs every op, and only thread 0
// may record, so each op is counted once per layer and step (512 steps).
TEST_CASE("bench: ./infer --bench --profile counts each op of a decode step once") {
    std::string out;
    REQUIRE_MESSAGE(run("./infer --bench --profile --preset exp-mamba2", &out) == 0, out);  // 2 layers
    CHECK_MESSAGE(out.find("a decode step over timed ops:") != std::string::npos, out);
    auto calls = [&](const std::string &op) {
        size_t p = out.find("  " + op + " ");
        if (p == std::string::npos) return -1L;
        std::istringstream row(out.substr(p, out.find('\n', p) - p));
        std::string name, share;
        long n = -1;
        row >> name >> share >> n;
        return n;
    };
    CHECK_MESSAGE(calls("ssd_recurrent_forward") == 2 * 512, out);
    CHECK_MESSAGE(calls("conv1d_silu_forward") == 2 * 512, out);
    CHECK_MESSAGE(calls("matmul_forward") == (2 * 2 + 1) * 512, out);  // in_proj, out_proj per layer; the lm head
}

// --profile of a training step: each matmul under its shape (input width ->
// output widths, a group's members joined by +), and the shapes' shares add
// up to the matmuls' own share of the step.
TEST_CASE("bench: ./train --bench --profile times each matmul shape") {
    std::string out;
    REQUIRE_MESSAGE(run("./train --bench --profile --preset tiny-gla --n-layer 1 --batch 2 --seq-len 64", &out) == 0, out);
    auto row = [&](const std::string &shape, double *share) {  // the calls on the shape's row, -1 if none
        size_t p = out.find("  " + shape + "  ");
        if (p == std::string::npos) return -1L;
        std::istringstream r(out.substr(p + 2 + shape.size(), out.find('\n', p) - p));
        long n = -1;
        r >> *share;
        r.ignore(1);  // the %
        r >> n;
        return n;
    };
    double share, sum = 0;
    // 8 measured steps; D 192, K 96, V 192, r 16, F 512, 256 bytes
    CHECK_MESSAGE(row("forward 192 -> 96+96+192+192+16", &share) == 8, out);  // q, k, v, og, the gate's low rank
    CHECK_MESSAGE(row("forward 192 -> 512+512", &share) == 8, out);          // the MLP's gate and up
    CHECK_MESSAGE(row("backward 192 -> 96", &share) == 16, out);             // q, k
    CHECK_MESSAGE(row("backward 16 -> 96", &share) == 8, out);               // the gate's second factor
    CHECK_MESSAGE(row("backward 192 -> 256", &share) == 8, out);             // the tied lm head
    for (const char *s : {"forward 192 -> 96+96+192+192+16", "forward 192 -> 512+512", "forward 16 -> 96", "forward 192 -> 192",
                          "forward 512 -> 192", "forward 192 -> 256", "backward 192 -> 96", "backward 192 -> 16",
                          "backward 16 -> 96", "backward 192 -> 192", "backward 192 -> 512", "backward 512 -> 192",
                          "backward 192 -> 256"}) {
        CHECK_MESSAGE(row(s, &share) > 0, s);
        sum += share;
    }
    size_t p = out.find("of the GEMM rate, in ");
    REQUIRE_MESSAGE(p != std::string::npos, out);
    double total = atof(out.c_str() + p + strlen("of the GEMM rate, in "));
    CHECK_MESSAGE(fabs(sum - total) < 0.05 * 14, out);  // the 13 rows and the total, each rounded to 0.1
}

TEST_CASE("checkpoint pair: an interrupted save is finished or dropped at the next start; stale temporaries go") {
    std::string d = tmpdir("pair"), out;
    std::string common = std::string("./train ") + TINY_GLA + " --steps 6 --batch 2 --seq-len 24 --warmup 2 --save-every 2 --quiet --seed 3";
    REQUIRE_MESSAGE(run(common + " --out " + d + "/ref.bin", &out) == 0, out);
    REQUIRE_MESSAGE(run(common + " --out " + d + "/a.bin --stop-at 2", &out) == 0, out);
    REQUIRE_MESSAGE(run(common + " --out " + d + "/b.bin --stop-at 4", &out) == 0, out);
    // a.bin: killed after the commit point of the step-4 save: the new model, the old .opt, the new one as .opt.next
    run("cp " + d + "/b.bin " + d + "/a.bin && cp " + d + "/b.bin.opt " + d + "/a.bin.opt.next");
    // and the debris of a kill mid-write
    for (const char *ext : {".tmp", ".opt.tmp", ".opt.next.tmp", ".png.tmp", ".csv.tmp"})
        REQUIRE(write_file_atomic(d + "/a.bin" + ext, {{"junk", 4}}).empty());
    REQUIRE_MESSAGE(run("./train --resume " + d + "/a.bin", &out) == 0, out);
    CHECK(out.find("completed the interrupted save of " + d + "/a.bin (step 4)") != std::string::npos);
    CHECK(out.find("resuming " + d + "/a.bin at step 4") != std::string::npos);
    CHECK(bytes(d + "/a.bin") == bytes(d + "/ref.bin"));
    CHECK(bytes(d + "/a.bin.opt") == bytes(d + "/ref.bin.opt"));
    // c.bin: killed before the commit point: the old pair and a half-written .opt.next, which is dropped
    REQUIRE_MESSAGE(run(common + " --out " + d + "/c.bin --stop-at 2", &out) == 0, out);
    std::vector<char> half = bytes(d + "/b.bin.opt");
    half.resize(half.size() / 2);
    REQUIRE(write_file_atomic(d + "/c.bin.opt.next", {{half.data(), half.size()}}).empty());
    REQUIRE_MESSAGE(run("./train --resume " + d + "/c.bin", &out) == 0, out);
    CHECK(out.find("resuming " + d + "/c.bin at step 2") != std::string::npos);
    CHECK(bytes(d + "/c.bin") == bytes(d + "/ref.bin"));
    std::string left = listing(d);
    CAPTURE(left);
    CHECK(left.find(".tmp") == std::string::npos);
    CHECK(left.find(".next") == std::string::npos);
    CHECK(left.find(".lock") == std::string::npos);
    // the loss curve is written atomically: a failed write keeps the old chart whole
    std::vector<char> png = bytes(d + "/ref.bin.png");
    REQUIRE(png.size() > 1000);
    // a directory in the temporary file's place (not empty, so the start of the run cannot remove it) makes the write fail
    REQUIRE(mkdir((d + "/ref.bin.png.tmp").c_str(), 0755) == 0);
    REQUIRE(write_file_atomic(d + "/ref.bin.png.tmp/x", {{"x", 1}}).empty());
    REQUIRE_MESSAGE(run("./train --resume " + d + "/ref.bin --steps 7 --quiet", &out) == 0, out);
    CHECK(bytes(d + "/ref.bin.png") == png);
    run("rm -rf " + d);
}

// A kill after the last save but before the run's end leaves a finished pair,
// perhaps with its loss curve a step behind: resuming it is no error.
TEST_CASE("a finished run resumed again: nothing to train, its loss curve brought up to date; an earlier --steps is refused") {
    std::string d = tmpdir("done"), out;
    REQUIRE_MESSAGE(run(std::string("./train ") + TINY_GLA + " --steps 3 --batch 2 --seq-len 24 --save-every 1 --quiet --out " + d + "/f.bin", &out) == 0, out);
    std::vector<char> model = bytes(d + "/f.bin"), opt = bytes(d + "/f.bin.opt"), png = bytes(d + "/f.bin.png"), csv = bytes(d + "/f.bin.csv");
    REQUIRE(png.size() > 1000);
    // the curve of the step before, and the debris of a kill while the last one was written
    REQUIRE(write_file_atomic(d + "/f.bin.png", {{"old", 3}}).empty());
    REQUIRE(write_file_atomic(d + "/f.bin.csv", {{"old", 3}}).empty());
    REQUIRE(write_file_atomic(d + "/f.bin.png.tmp", {{"junk", 4}}).empty());
    REQUIRE_MESSAGE(run("./train --resume " + d + "/f.bin", &out) == 0, out);
    CHECK_MESSAGE(out.find("the checkpoint is at step 3 of --steps 3: the run is complete") != std::string::npos, out);
    CHECK(bytes(d + "/f.bin.png") == png);
    CHECK(bytes(d + "/f.bin.csv") == csv);
    CHECK(bytes(d + "/f.bin") == model);
    CHECK(bytes(d + "/f.bin.opt") == opt);
    std::string left = listing(d);
    CAPTURE(left);
    CHECK(left.find(".tmp") == std::string::npos);
    CHECK(left.find(".lock") == std::string::npos);
    CHECK(run("./train --resume " + d + "/f.bin --steps 2", &out) == 1);
    CHECK_MESSAGE(out.find("error: the checkpoint is at step 3, past --steps 2") != std::string::npos, out);
    CHECK(bytes(d + "/f.bin") == model);
    run("rm -rf " + d);
}

TEST_CASE("lock: a second run on the same --out is refused; a killed run's lock does not block") {
    std::string d = tmpdir("lock"), out;
    std::string cmd = std::string("OMP_NUM_THREADS=1 ./train ") + TINY_GLA + " --steps 100000 --batch 2 --seq-len 32 --save-every 0 --quiet --out " + d + "/m.bin";
    FILE *p = popen((cmd + " > " + d + "/log 2>&1 & echo $!").c_str(), "r");
    REQUIRE(p);
    int pid = 0;
    REQUIRE(fscanf(p, "%d", &pid) == 1);
    pclose(p);
    for (int i = 0; i < 400 && !exists(d + "/m.bin.lock"); i++) usleep(25000);
    REQUIRE(exists(d + "/m.bin.lock"));
    int rc = run(cmd, &out);
    CHECK(rc == 1);
    CHECK(out.find("another run is writing this checkpoint") != std::string::npos);
    kill(pid, SIGKILL);
    // its lock goes when it dies, which on a busy machine can take a while: wait until it is
    // gone or a zombie (not our child: whoever reaps it may not, in a container)
    auto alive = [&] {
        std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
        std::string pid_, comm, state;
        return f >> pid_ >> comm >> state && state != "Z";
    };
    for (int i = 0; i < 400 && alive(); i++) usleep(25000);
    CHECK(exists(d + "/m.bin.lock"));  // left behind by the kill, but no longer held
    rc = run(std::string("./train ") + TINY_GLA + " --steps 2 --batch 2 --seq-len 32 --quiet --out " + d + "/m.bin", &out);
    CHECK_MESSAGE(rc == 0, out);
    CHECK_FALSE(exists(d + "/m.bin.lock"));
    run("rm -rf " + d);
}

TEST_CASE("kill -9 at random moments, mid-save included: every pair left resumes bit for bit (tests/kill_test.sh)") {
    std::string out;
    int rc = run("sh tests/kill_test.sh 3 " + std::to_string(getpid() % 1000) + " /tmp/statex_kill_" + std::to_string(getpid()), &out);
    CAPTURE(out);
    CHECK(rc == 0);
    CHECK(out.find("kill test: 3 kills, 3 resumable pairs checked") != std::string::npos);
}

// ----------------------------------------------------------------------------
// The property: for randomly drawn flag mixes, N steps equal stopping at some
// step and resuming, bit for bit, for the model and for .opt. The mixes cover
// both families, --stop-at at, before and after eval and save steps, recall
// rows, --eval-rows above and below --batch, expansion (every mode),
// --train-only-expanded and StateX post-training rates.
// STATEX_PROPERTY_SEED draws other mixes (default 1).

TEST_CASE("property: randomly drawn flag mixes resume bit for bit; malloc placement changes nothing") {
    std::string d = tmpdir("prop"), out;
    const char *env = getenv("STATEX_PROPERTY_SEED");
    Rng r = {env ? (uint64_t)atoll(env) : 1};
    auto pick = [&](std::vector<int> v) { return v[rng_int(&r, (int)v.size())]; };
    // base models to expand
    std::string base[2] = {d + "/base_gla.bin", d + "/base_m2.bin"};
    for (int f = 0; f < 2; f++)
        REQUIRE_MESSAGE(run(std::string("./train ") + (f ? TINY_M2 : TINY_GLA) + " --steps 3 --batch 2 --seq-len 16 --quiet --out " + base[f], &out) == 0, out);
    // every third mix expands, the families alternating, each taking its modes
    // in turn: 24 mixes give each family four expansions, so every mode runs
    const char *modes[2][4] = {{"reinit", "merge", "reinit", "merge"}, {"reinit", "copy", "zero", "grow"}};
    int mixes = 24;
    for (int i = 0; i < mixes; i++) {
        int fam = i % 2, steps = 6 + rng_int(&r, 6), batch = 1 + rng_int(&r, 3);
        int eval_every = pick({0, 2, 3, 5}), save_every = pick({0, 2, 4, 5});
        std::string flags;
        bool expand = i % 3 == 2;
        if (expand) {
            flags = " --init " + base[fam] + " --expand " + modes[fam][i / 6 % 4] + " --expand-every " + std::to_string(1 + rng_int(&r, 2));
            int post = rng_int(&r, 3);
            if (post == 1) flags += " --train-only-expanded";
            if (post == 2) flags += " --expanded-lr-scale 0.5";
        } else {
            flags = std::string(" ") + (fam ? TINY_M2 : TINY_GLA);
        }
        flags += strf(" --steps %d --batch %d --seq-len %d --warmup %d --eval-every %d --save-every %d --eval-rows %d --seed %d",
                      steps, batch, 16 + rng_int(&r, 25), rng_int(&r, 4), eval_every, save_every,
                      pick({1, batch, batch + 1, 2 * batch + 1}), 1 + rng_int(&r, 100));
        if (rng_int(&r, 2)) flags += strf(" --recall-frac %s --passkey-share %s --mqar-min %d --mqar-max 6 --mqar-gap %d",
                                          rng_int(&r, 2) ? "0.5" : "1", rng_int(&r, 2) ? "0.5" : "0", 1 + rng_int(&r, 3), pick({0, 8}));
        if (rng_int(&r, 2)) flags += " --grad-clip 0 --weight-decay 0";
        // where to stop: at, just before or after an eval or save step; the first step; the last but one
        std::vector<int> at = {1, steps - 1};
        for (int every : {eval_every, save_every})
            if (every > 0) for (int s = every; s < steps; s += every) for (int k = -1; k <= 1; k++) at.push_back(s + k);
        int stop = std::max(1, std::min(steps - 1, pick(at)));
        std::string full = d + strf("/full%d.bin", i), half = d + strf("/half%d.bin", i);
        // every 4th mix on all threads; the rest on one, to keep the suite quick (results are
        // reproducible for a given thread count, and placement mattered at any count)
        std::string train = i % 4 == 0 ? "./train" : "OMP_NUM_THREADS=1 ./train";
        CAPTURE(i); CAPTURE(flags); CAPTURE(stop); CAPTURE(train);
        REQUIRE_MESSAGE(run(train + flags + " --quiet --out " + full, &out) == 0, out);
        REQUIRE_MESSAGE(run(train + flags + " --quiet --out " + half + " --stop-at " + std::to_string(stop), &out) == 0, out);
        REQUIRE_MESSAGE(run(train + " --resume " + half + " --quiet", &out) == 0, out);
        std::vector<char> a = bytes(full);
        CHECK(a.size() > 1024);
        CHECK(a == bytes(half));
        CHECK(bytes(full + ".opt") == bytes(half + ".opt"));
        if (i < 3) {
            // the same run with malloc placing buffers elsewhere: mmap for large ones only, or for nearly all
            for (const char *tune : {"glibc.malloc.mmap_threshold=33554432", "glibc.malloc.mmap_threshold=4096:glibc.malloc.arena_max=1"}) {
                std::string other = d + strf("/tuned%d.bin", i);
                REQUIRE_MESSAGE(run(std::string("GLIBC_TUNABLES=") + tune + " " + train + flags + " --quiet --out " + other, &out) == 0, out);
                CAPTURE(tune);
                CHECK(bytes(other) == a);
                CHECK(bytes(other + ".opt") == bytes(full + ".opt"));
            }
        }
        run("rm -f " + full + "* " + half + "*");
    }
    MESSAGE("property: " << mixes << " flag mixes resumed bit for bit");
    run("rm -rf " + d);
}
