// Training and generation: generation equals the training forward, a resumed
// run equals an uninterrupted one bit for bit, a small model really learns, and
// bad input gets a clear error with nothing overwritten.
#include "test_util.h"
#include "../data/tasks.h"
#include <omp.h>

static int run(const std::string &cmd, std::string *out = nullptr) { return run_command(cmd, out); }
static std::string tmpdir() {
    std::string d = "/tmp/statex_train_" + std::to_string(getpid());
    mkdir(d.c_str(), 0755);
    return d;
}
static std::vector<char> file_bytes(const std::string &path) {
    std::vector<char> b;
    read_file(path, &b);
    return b;
}

// Scales every weight so activations are O(1) (a fresh model's 0.02 would make
// the comparisons trivial), keeping norms near 1 and decays in a sane range.
static void liven(Model *m, uint64_t seed) {
    Rng r = {seed};
    for (const ParamTensor &t : m->tensors) {
        float *p = m->params + t.offset;
        bool keep = t.name.find("dt_bias") != std::string::npos || t.name.find("A_log") != std::string::npos ||
                    t.name.find("norm") != std::string::npos || t.name.find(".D") != std::string::npos;
        if (keep) continue;
        float s = t.is_matrix ? 1.0f / sqrtf((float)t.cols) : 0.3f;
        for (size_t i = 0; i < t.size(); i++) p[i] = s * rng_normal(&r);
    }
}

// Logits of every position: one parallel (chunked) forward, versus a prefill
// of the first `prefill` tokens (chunked, into a state) and then one token at a
// time in the recurrent form, or (piece > 1) `piece` tokens at a time, chunked,
// each piece starting from the state the one before left.
static void check_generation_equals_forward(Model *m, int T, int prefill, int piece = 1) {
    const Config *c = &m->config;
    int V = c->vocab_size;
    Rng r = {42};
    std::vector<int> tokens(T);
    for (int &t : tokens) t = rng_int(&r, 256);
    cpu::model_alloc_acts(m, 1, T);
    m->mixer_form = MIX_CHUNKED;
    cpu::model_forward(m, tokens.data(), nullptr, 1, T);
    std::vector<float> full(m->acts.logits, m->acts.logits + (size_t)T * V), step((size_t)T * V);
    RecState st;
    cpu::state_alloc(c, 1, &st);
    if (prefill > 0) {
        cpu::model_forward(m, tokens.data(), nullptr, 1, prefill, &st);
        memcpy(step.data(), m->acts.logits, sizeof(float) * prefill * V);
    }
    m->mixer_form = piece == 1 ? MIX_RECURRENT : MIX_CHUNKED;
    for (int t = prefill; t < T; t += piece) {
        int len = std::min(piece, T - t);
        cpu::model_forward(m, &tokens[t], nullptr, 1, len, &st);
        memcpy(step.data() + (size_t)t * V, m->acts.logits, sizeof(float) * len * V);
    }
    double worst = 0;
    for (int t = 0; t < T; t++) worst = std::max(worst, rel_err(step.data() + (size_t)t * V, full.data() + (size_t)t * V, V));
    CAPTURE(T); CAPTURE(prefill); CAPTURE(piece);
    CHECK(worst < 1e-4);
    cpu::state_free(&st);
    m->mixer_form = MIX_CHUNKED;
}

TEST_CASE("generation equals the training forward: GLA and Mamba2, reference and expanded models") {
    for (const char *path : {"tests/refdata/gla_small.bin", "tests/refdata/gla_small_merge_every1_out.bin",
                             "tests/refdata/mamba2_small.bin", "tests/refdata/mamba2_small_copy_e4_every2_out.bin"}) {
        Model m;
        if (!load_model(path, &m)) continue;
        CAPTURE(path);
        check_generation_equals_forward(&m, 70, 0);   // every step recurrent
        check_generation_equals_forward(&m, 70, 37);  // chunked prefill into the state, then steps
        check_generation_equals_forward(&m, 70, 5, 2);  // pieces shorter than Mamba2's conv window (the
        check_generation_equals_forward(&m, 70, 4, 3);  // window's older inputs come from the state)
        cpu::model_free(&m);
    }
    // a fresh model with mixed head counts, expanded by merge; a Mamba2 grown
    for (int fam = 0; fam < 2; fam++) {
        Config c;
        preset_config(fam ? "exp-mamba2" : "exp-gla", &c);
        Model m;
        cpu::model_init(&m, &c, nullptr);
        cpu::model_random_init(&m, 5);
        liven(&m, 6);
        Config ce;
        float *pe;
        std::string e = cpu::expand_model(&c, m.params, fam ? "grow" : "merge", 2, 4, 1, &ce, &pe);
        REQUIRE_MESSAGE(e.empty(), e);
        Model me;
        cpu::model_init(&me, &ce, pe);
        check_generation_equals_forward(&me, 90, 33);
        cpu::model_free(&me);
        cpu::model_free(&m);
    }
}

TEST_CASE("learning: a tiny model's loss on a fixed text falls below 0.5 nats in 80 steps") {
    Config c;
    memset(&c, 0, sizeof c);
    c.family = FAMILY_GLA; c.vocab_size = 256; c.d_model = 48; c.n_layer = 2; c.tied = 1;
    c.key_dim = 24; c.value_dim = 48; c.gate_rank = 8; c.mlp_hidden = 96;
    c.n_head[0] = c.n_head[1] = 2;
    for (int fam = 0; fam < 2; fam++) {
        if (fam) { c.family = FAMILY_MAMBA2; c.d_inner = 96; c.headdim = 16; c.d_conv = 4; c.d_state[0] = c.d_state[1] = 16; }
        Model m;
        cpu::model_init(&m, &c, nullptr);
        cpu::model_random_init(&m, 11);
        std::string text = "the quick brown fox jumps over the lazy dog. ";
        int B = 4, T = 64;
        cpu::model_alloc_acts(&m, B, T);
        std::vector<int> in(B * T), tg(B * T);
        AdamWConfig opt;
        float first = 0, last = 0;
        for (int step = 1; step <= 80; step++) {
            for (int b = 0; b < B; b++)
                for (int t = 0; t < T; t++) {
                    in[b * T + t] = (uint8_t)text[(b * 7 + t) % text.size()];
                    tg[b * T + t] = (uint8_t)text[(b * 7 + t + 1) % text.size()];
                }
            cpu::model_forward(&m, in.data(), tg.data(), B, T);
            if (step == 1) first = m.loss;
            last = m.loss;
            cpu::model_zero_grad(&m);
            cpu::model_backward(&m);
            float norm = cpu::model_grad_norm(&m);
            cpu::model_update(&m, 1e-2f, norm > 1 ? 1 / norm : 1, step, &opt);
        }
        CAPTURE(fam); CAPTURE(first); CAPTURE(last);
        CHECK(first > 5.0f);  // ln 256 = 5.5: it starts knowing nothing
        CHECK(last < 0.5f);
        cpu::model_free(&m);
    }
}

static const char *TINY_GLA = "--family gla --d-model 32 --n-layer 2 --key-dim 16 --value-dim 32 --heads 2 --gate-rank 4 --mlp-hidden 64";
static const char *TINY_M2 = "--family mamba2 --d-model 32 --n-layer 2 --d-inner 64 --headdim 16 --d-state 8 --d-conv 4";

TEST_CASE("resume: N steps equal N/2, stop, resume, N/2, bit for bit") {
    std::string d = tmpdir();
    for (const char *model : {TINY_GLA, TINY_M2}) {
        std::string common = std::string("./train ") + model +
                             " --steps 12 --batch 3 --seq-len 40 --warmup 3 --eval-every 5 --eval-rows 4 --save-every 0 --quiet"
                             " --recall-frac 0.3 --passkey-share 0.5 --seed 9";
        std::string out;
        REQUIRE_MESSAGE(run(common + " --out " + d + "/full.bin", &out) == 0, out);
        REQUIRE_MESSAGE(run(common + " --out " + d + "/half.bin --stop-at 6", &out) == 0, out);
        CHECK(out.find("stopped after step 6") != std::string::npos);
        CHECK(file_bytes(d + "/half.bin") != file_bytes(d + "/full.bin"));  // 6 steps are not 12: the resume has work to do
        REQUIRE_MESSAGE(run("./train --resume " + d + "/half.bin --quiet", &out) == 0, out);
        CHECK(out.find("at step 6") != std::string::npos);
        std::vector<char> a = file_bytes(d + "/full.bin"), b = file_bytes(d + "/half.bin");
        CHECK(a.size() > 1024);
        CHECK(a == b);
        CHECK(file_bytes(d + "/full.bin.opt") == file_bytes(d + "/half.bin.opt"));
        CHECK(file_bytes(d + "/full.bin.png").size() > 1000);  // the loss curve
    }
    run("rm -rf " + d);
}

TEST_CASE("bad input: a clear error, a non-zero exit, nothing overwritten") {
    std::string d = tmpdir(), out;
    std::string keep = d + "/keep.bin";
    const char sentinel[] = "do not touch";
    REQUIRE(write_file_atomic(keep, {{sentinel, sizeof sentinel}}).empty());
    std::string base = std::string("./train ") + TINY_GLA + " --steps 2 --batch 1 --seq-len 16 --out " + keep;
    auto refused = [&](const std::string &cmd, const std::string &why) {
        int rc = run(cmd, &out);
        CAPTURE(cmd); CAPTURE(out);
        CHECK(rc != 0);
        CHECK(out.find("error: ") != std::string::npos);
        CHECK(out.find(why) != std::string::npos);
        std::vector<char> b = file_bytes(keep);
        CHECK(std::string(b.begin(), b.end() - 1) == sentinel);
    };
    refused(base + " --data " + d + "/missing.txt", "missing.txt");
    REQUIRE(write_file_atomic(d + "/empty.txt", {}).empty());
    refused(base + " --data " + d + "/empty.txt", "is empty");
    refused(base + " --no-such-flag 3", "unknown flag '--no-such-flag'");
    refused(base + " --steps many", "'many' is not an integer");
    refused(base + " --device tpu", "not cpu or cuda");
    refused("./train --init tests/refdata/mamba2_small.bin --expand merge --expand-every 1 --out " + keep, "not one of Mamba2's");
    refused("./train --init tests/refdata/gla_small.bin --expand copy --expand-every 1 --out " + keep, "not one of GLA's");
    refused("./train --init " + d + "/empty.txt --steps 1 --out " + keep, "truncated");
    refused("./train --init tests/refdata/gla_small.bin --d-model 32 --steps 1 --out " + keep, "drop --d-model");
    refused("./infer --model tests/refdata/gla_small.bin --max-prompt 8 --prompt 'longer than eight'", "more than --max-prompt");
    refused("./infer --model " + d + "/missing.bin", "--model: cannot open");
    // flags that would be ignored are refused instead
    refused("./train --init tests/refdata/gla_small.bin --expand reinit --expand-every 1 --expand-factor 2 --out " + keep,
            "--expand-factor is for Mamba2's modes");
    refused(base + " --expand-factor 2", "--expand-factor needs --expand");
    refused(base + " --expanded-lr-scale 3", "--expanded-lr-scale needs --expand-every");
    refused(base + " --heads 1,2,4", "--heads: 3 values for a model of 2 layers");
    refused("./train --init tests/refdata/gla_small.bin --expand reinit --out " + keep, "--expand needs --expand-every K");
    // a run never overwrites the model it starts from; a model without .opt is not a run to resume
    run("cp tests/refdata/gla_small.bin " + d + "/start.bin");
    refused("./train --init " + d + "/start.bin --steps 1 --out " + d + "/start.bin", "is the --init model itself");
    CHECK(file_bytes(d + "/start.bin") == file_bytes("tests/refdata/gla_small.bin"));
    refused("./train --resume " + d + "/start.bin", "no " + d + "/start.bin.opt beside it");
    refused("./infer --model tests/refdata/gla_small.bin --temperature -1", "--temperature");
    run("rm -rf " + d);
}

TEST_CASE("infer: generates the requested bytes, greedy is deterministic") {
    std::string a, b, stats;
    std::string cmd = "./infer --model tests/refdata/gla_small.bin --prompt 'Hi' --max-tokens 20 --temperature 0";
    REQUIRE(run(cmd + " 2>/dev/null", &a) == 0);  // the text alone (stdout)
    REQUIRE(run(cmd + " 2>/dev/null", &b) == 0);
    REQUIRE(run(cmd + " 2>&1 >/dev/null", &stats) == 0);  // the speed line (stderr)
    CHECK(a == b);
    CHECK(a.rfind("Hi", 0) == 0);
    CHECK(stats.find("generated 20 tokens") != std::string::npos);
}

TEST_CASE("infer: sampling is reproducible by seed, and top-k 1 is greedy") {
    std::string base = "./infer --model tests/refdata/gla_small.bin --prompt 'Hi' --max-tokens 20", greedy, k1, s1, s1again, s2;
    REQUIRE(run(base + " --temperature 0 2>/dev/null", &greedy) == 0);
    REQUIRE(run(base + " --temperature 0.8 --top-k 1 --seed 5 2>/dev/null", &k1) == 0);
    REQUIRE(run(base + " --temperature 0.8 --seed 1 2>/dev/null", &s1) == 0);
    REQUIRE(run(base + " --temperature 0.8 --seed 1 2>/dev/null", &s1again) == 0);
    REQUIRE(run(base + " --temperature 0.8 --seed 2 2>/dev/null", &s2) == 0);
    CHECK(k1 == greedy);   // the one most likely byte, whatever the seed and temperature
    CHECK(s1 == s1again);  // the same seed, the same text
    CHECK(s1 != s2);       // 20 bytes drawn from the whole softmax: two seeds do not agree by chance
    CHECK(s1.rfind("Hi", 0) == 0);
}

TEST_CASE("infer: --prompts takes lines ending in \\r\\n as their text alone") {
    std::string d = tmpdir(), unix_out, dos_out;
    REQUIRE(write_file_atomic(d + "/unix.txt", {{"Hi\nA\n", 5}}).empty());
    REQUIRE(write_file_atomic(d + "/dos.txt", {{"Hi\r\nA\r\n", 7}}).empty());
    std::string cmd = "./infer --model tests/refdata/gla_small.bin --max-tokens 8 --temperature 0 --prompts ";
    REQUIRE(run(cmd + d + "/unix.txt 2>/dev/null", &unix_out) == 0);
    REQUIRE(run(cmd + d + "/dos.txt 2>/dev/null", &dos_out) == 0);
    CHECK(dos_out == unix_out);
    CHECK(dos_out.find("<0d>") == std::string::npos);
    run("rm -rf " + d);
}

TEST_CASE("infer: batched generation (--prompts) gives each row what it gives alone") {
    std::string d = tmpdir(), batch;
    const char *prompts[] = {"Hi", "Hello there", "A"};
    FILE *f = fopen((d + "/prompts.txt").c_str(), "w");
    REQUIRE(f);
    for (const char *p : prompts) fprintf(f, "%s\n", p);
    fclose(f);
    std::string model = " --model tests/refdata/gla_small.bin --max-tokens 20 --temperature 0";
    REQUIRE(run("./infer" + model + " --prompts " + d + "/prompts.txt 2>/dev/null", &batch) == 0);
    for (int r = 0; r < 3; r++) {
        // rows differ in length: a longer prompt is fed one byte at a time beside
        // the others' generation, the same math in the recurrent form (tested
        // equal to the chunked one), so greedy picks the same bytes
        std::string alone;
        REQUIRE(run("./infer" + model + " --prompt '" + prompts[r] + "' 2>/dev/null", &alone) == 0);
        std::string header = "--- prompt " + std::to_string(r + 1) + "\n";
        size_t at = batch.find(header);
        REQUIRE(at != std::string::npos);
        std::string row = batch.substr(at + header.size(), alone.size());
        CHECK(row == alone);
    }
}

TEST_CASE("recall tasks: MQAR and passkey rows are well formed") {
    Corpus c;
    c.path = "x";
    for (int i = 0; i < 5000; i++) c.bytes.push_back((uint8_t)('a' + i % 26));
    RecallMix mix;
    mix.frac = 1;
    mix.mqar_min = mix.mqar_max = 8;
    int T = 64;
    std::vector<int> in(T), tg(T);
    Rng r = {1};
    sample_row(&c, &mix, &r, T, in.data(), tg.data());
    // k1 v1 .. k8 v8, then 8 queries: targets only on the 8 answers
    int answers = 0;
    for (int t = 0; t < 32; t++) {
        if (t < 16) CHECK(in[t] >= (t % 2 ? 192 : 128));
        if (tg[t] >= 0) {
            answers++;
            CHECK(in[t] >= 128); CHECK(in[t] < 192);  // a key is the input
            CHECK(tg[t] >= 192);                     // its value the target
            for (int s = 0; s < 16; s += 2) if (in[s] == in[t]) CHECK(in[s + 1] == tg[t]);
        }
    }
    CHECK(answers == 8);
    std::string answer, p = passkey_prompt(300, 0.5, &r, &answer);
    CHECK(p.size() == 300);
    CHECK(p.find("The pass key is " + answer + ". Remember it.") != std::string::npos);
    CHECK(p.substr(p.size() - 38) == "What is the pass key? The pass key is ");
}

TEST_CASE("experiment: the --quick pipeline runs end to end and writes the results table") {
    std::string d = tmpdir() + "/exp", out;
    int rc = run("SEEDS=1 sh data/experiment.sh --quick " + d, &out);
    CAPTURE(out.substr(out.size() > 3000 ? out.size() - 3000 : 0));
    REQUIRE(rc == 0);
    std::vector<char> md = file_bytes(d + "/results.md");
    std::string text(md.begin(), md.end());
    for (const char *want : {"## GLA", "## Mamba2", "| MQAR n=64 |", "| MQAR n=16, gap 32 |", "| passkey 256 bytes (mean of depths) |",
                             "| validation bits/byte |", "| recurrent state (floats) |", "| peak memory (MB) |",
                             "| base (a) | big state (b) | LPT | StateX reinit | StateX merge |",
                             "| base (a) | big state (b) | LPT | StateX reinit | StateX grow |", "share of the (b) − (a) gap closed"})
        CHECK_MESSAGE(text.find(want) != std::string::npos, want);
    // the sweep: both rates for each model, one of them kept
    md = file_bytes(d + "/sweep.md");
    text.assign(md.begin(), md.end());
    for (const char *want : {"| gla base | 1e-2", "| gla big | 3e-2", "| mamba2 base | 3e-2", "| mamba2 big | 1e-2"})
        CHECK_MESSAGE(text.find(want) != std::string::npos, want);
    CHECK(text.find(" * |") != std::string::npos);
    CHECK(file_bytes(d + "/gla_mqar.png").size() > 1000);
    CHECK(file_bytes(d + "/gla_mqar_gap.png").size() > 1000);
    CHECK(file_bytes(d + "/mamba2_passkey.png").size() > 1000);
    run("rm -rf " + tmpdir());
}

// Divergence is checked (loss and gradient norm, from the state to be saved)
// before a save, so the kept checkpoint never holds the blown-up state.
TEST_CASE("divergence stops training, names a checkpoint that exists and resumes, and never saves the diverged state") {
    std::string d = tmpdir(), out;
    std::string base = std::string("./train ") + TINY_GLA + " --batch 2 --seq-len 16 --warmup 0 --quiet";
    REQUIRE_MESSAGE(run(base + " --steps 4 --save-every 2 --out " + d + "/good.bin", &out) == 0, out);
    // resumed with a learning rate of 1e30: the first update blows the weights up
    int rc = run("./train --resume " + d + "/good.bin --steps 8 --lr 1e30 --grad-clip 0 --save-every 1 --quiet", &out);
    CAPTURE(out);
    CHECK(rc != 0);
    CHECK(out.find("training stopped; the last good checkpoint is " + d + "/good.bin (step 4)") != std::string::npos);
    Config c;
    float *p = nullptr;
    CHECK(read_model_file(d + "/good.bin", &c, &p).empty());  // whole, finite
    free(p);
    REQUIRE_MESSAGE(run("./train --resume " + d + "/good.bin --steps 5 --quiet", &out) == 0, out);  // and it resumes
    // a fresh run that diverges at once has saved nothing, and says so
    rc = run(base + " --steps 5 --lr 1e30 --grad-clip 0 --save-every 1 --out " + d + "/nan.bin", &out);
    CHECK(rc != 0);
    CHECK(out.find("training stopped; no checkpoint of this run was saved") != std::string::npos);
    CHECK(file_bytes(d + "/nan.bin").empty());
    CHECK(file_bytes(d + "/nan.bin.opt").empty());
    // resumed into another file: the last good one is the checkpoint it started from
    rc = run("./train --resume " + d + "/good.bin --steps 8 --lr 1e30 --grad-clip 0 --out " + d + "/other.bin --quiet", &out);
    CHECK(rc != 0);
    CHECK(out.find("the last good checkpoint is " + d + "/good.bin (step 5)") != std::string::npos);
    run("rm -rf " + d);
}

// Post-training options: only the expanded layers' token mixing learns, or it
// learns at its own rate (0 here, so it must not move).
TEST_CASE("statex post-training: --train-only-expanded and --expanded-lr-scale") {
    std::string d = tmpdir(), out;
    Config c, ce;
    float *p = nullptr, *pe = nullptr;
    REQUIRE(read_model_file("tests/refdata/mamba2_small.bin", &c, &p).empty());
    REQUIRE(cpu::expand_model(&c, p, "grow", 2, 4, 1, &ce, &pe).empty());  // what --seed 1 expands to
    std::vector<ParamTensor> layout = param_layout(&ce);
    std::string base = "./train --init tests/refdata/mamba2_small.bin --expand grow --expand-every 2 --steps 3 --batch 2 "
                       "--seq-len 32 --lr 1e-2 --warmup 0 --quiet --seed 1 --out " + d;
    for (int only = 1; only >= 0; only--) {
        std::string cmd = base + (only ? "/a.bin --train-only-expanded" : "/b.bin --expanded-lr-scale 0");
        REQUIRE_MESSAGE(run(cmd, &out) == 0, out);
        Config c2;
        float *p2 = nullptr;
        REQUIRE(read_model_file(d + (only ? "/a.bin" : "/b.bin"), &c2, &p2).empty());
        int moved_expanded = 0, moved_other = 0;
        for (const ParamTensor &t : layout) {
            bool expanded = t.is_mixer && t.layer == 0;  // every 2nd of 2 layers: layer 0
            bool same = memcmp(p2 + t.offset, pe + t.offset, 4 * t.size()) == 0;
            if (!same) (expanded ? moved_expanded : moved_other)++;
        }
        CAPTURE(only);
        if (only) { CHECK(moved_expanded > 0); CHECK(moved_other == 0); }
        else { CHECK(moved_expanded == 0); CHECK(moved_other > 0); }
        free(p2);
    }
    free(p);
    free(pe);
    run("rm -rf " + d);
}

// A decode step with more than one thread (and no more threads than
// processors) runs all its ops in one parallel region, each op splitting its
// loop among the threads and ending at a spinning barrier (statex_cpu.cpp,
// parallel_for); one thread runs the ops one after another without OpenMP;
// more threads than processors take one parallel region per op. Each number is
// computed the same way in every case, so the logits and the recurrent state
// must match bit for bit, for one row and for a few, and for thread counts
// that split the loops unevenly.
// The three ways a decode step runs: on one thread; in one parallel region (2
// threads, and as many as there are processors where that is more); one region
// per op (more threads than processors, see cpu::forward_in_one_region).
TEST_CASE("generation: a decode step on 1, 2 or more threads gives the same logits and state, bit for bit") {
    int threads = omp_get_max_threads(), procs = omp_get_num_procs();
    std::vector<int> counts = {1, 2, procs + 1};
    if (procs > 2) counts.push_back(procs);
    // (mamba2-small at B 8: wide enough that its conv, too, is split between the threads)
    for (const char *preset : {"exp-gla", "exp-mamba2", "mamba2-small"}) {
        Config c;
        preset_config(preset, &c);
        Model m;
        cpu::model_init(&m, &c, nullptr);
        cpu::model_random_init(&m, 8);
        liven(&m, 9);
        for (int B : {1, 3, 8}) {
            cpu::model_alloc_acts(&m, B, 1);
            m.mixer_form = MIX_RECURRENT;
            std::vector<std::vector<float>> logits(counts.size()), state(counts.size());
            for (size_t k = 0; k < counts.size(); k++) {
                omp_set_num_threads(counts[k]);
                RecState st;
                cpu::state_alloc(&c, B, &st);
                Rng r = {11};
                std::vector<int> tok(B);
                for (int t = 0; t < 12; t++) {
                    for (int &x : tok) x = rng_int(&r, 256);
                    cpu::model_forward(&m, tok.data(), nullptr, B, 1, &st);
                    logits[k].insert(logits[k].end(), m.acts.logits, m.acts.logits + (size_t)B * c.vocab_size);
                }
                for (int l = 0; l < c.n_layer; l++)
                    state[k].insert(state[k].end(), st.layer[l], st.layer[l] + cpu::state_floats(&c, l, B));
                cpu::state_free(&st);
            }
            omp_set_num_threads(threads);
            CAPTURE(preset); CAPTURE(B);
            for (size_t k = 1; k < counts.size(); k++) {
                CAPTURE(counts[k]);
                CHECK(logits[0] == logits[k]);
                CHECK(state[0] == state[k]);
            }
        }
        cpu::model_free(&m);
    }
}
