// infer.cpp: generate text from a model file, like llama2.c's run.c.
//
//   1. prefill: the prompt goes through the chunked form in pieces of up to
//      PREFILL_PIECE tokens, each piece starting from the recurrent state the
//      previous one left (so memory does not grow with the prompt);
//   2. generate: one token at a time in the recurrent form, O(1) time and
//      memory per token: the state is all the model remembers.
// `./infer --help` lists the flags.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "model.h"
#include "data/tasks.h"
#include <map>
#include <omp.h>
#include <sys/resource.h>

#define PREFILL_PIECE 1024

struct InferOptions {
    std::string model, prompt = "", prompt_file, device = "cpu", preset;
    int max_tokens = 256, top_k = 0, max_prompt = 1 << 20;
    float temperature = 0.8f;
    uint64_t seed = 1;
    bool prompt_given = false, bench = false;
    // evaluation
    bool eval = false;
    std::string eval_out, val = "data/val.txt", summarize;
    float eval_scale = 1.0f;
    int passkey_max = 4096, mqar_gap = 128;
};

static void usage() {
    printf(
        "usage: ./infer --model PATH [flags]\n"
        "  --prompt TEXT        the text to continue (default: empty)\n"
        "  --prompt-file FILE   read the prompt from a file\n"
        "  --max-tokens N       bytes to generate (default 256)\n"
        "  --temperature X      0 = greedy (default 0.8)\n"
        "  --top-k K            sample among the K most likely bytes (0 = all)\n"
        "  --seed N             sampling seed (default 1)\n"
        "  --max-prompt N       refuse longer prompts (default 1048576 bytes)\n"
        "  --device cpu|cuda\n"
        "  --bench [--preset gla-small|mamba2-small]   generation speed of a random model\n"
        "evaluation (README.md \"Recall tasks\"):\n"
        "  --eval               MQAR accuracy (n = 4..64, without and with a gap), passkey accuracy\n"
        "                       (lengths 256..--passkey-max, depths 0..1), validation bits/byte\n"
        "  --eval-out PREFIX    also write PREFIX.tsv, PREFIX_mqar.png, PREFIX_passkey.png\n"
        "  --val FILE           validation text (default data/val.txt)\n"
        "  --eval-scale X       samples x X (default 1: about 2560 answers per MQAR cell)\n"
        "  --passkey-max N      longest passkey context (default 4096)   --mqar-gap N (default 128)\n"
        "  --summarize DIR      tables and charts from DIR's *.eval.tsv (the experiment)\n");
}

static void parse_args(int argc, char **argv, InferOptions *o) {
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= argc) die("%s needs a value (see ./infer --help)", a.c_str());
            return argv[++i];
        };
        if (a == "--help" || a == "-h") { usage(); exit(0); }
        else if (a == "--model") o->model = val();
        else if (a == "--prompt") { o->prompt = val(); o->prompt_given = true; }
        else if (a == "--prompt-file") o->prompt_file = val();
        else if (a == "--max-tokens") o->max_tokens = to_int(a, val());
        else if (a == "--temperature") o->temperature = to_float(a, val());
        else if (a == "--top-k") o->top_k = to_int(a, val());
        else if (a == "--seed") o->seed = (uint64_t)to_int(a, val());
        else if (a == "--max-prompt") o->max_prompt = to_int(a, val());
        else if (a == "--device") o->device = val();
        else if (a == "--bench") o->bench = true;
        else if (a == "--preset") o->preset = val();
        else if (a == "--eval") o->eval = true;
        else if (a == "--eval-out") o->eval_out = val();
        else if (a == "--val") o->val = val();
        else if (a == "--eval-scale") o->eval_scale = to_float(a, val());
        else if (a == "--passkey-max") o->passkey_max = to_int(a, val());
        else if (a == "--mqar-gap") o->mqar_gap = to_int(a, val());
        else if (a == "--summarize") o->summarize = val();
        else die("unknown flag '%s' (see ./infer --help)", a.c_str());
    }
    if (o->eval_scale <= 0 || o->eval_scale > 100) die("--eval-scale must be in (0, 100]");
    if (o->passkey_max < 256) die("--passkey-max must be at least 256");
    if (o->mqar_gap < 0 || o->mqar_gap > 4096) die("--mqar-gap must be in 0..4096");
    if (o->device != "cpu" && o->device != "cuda") die("--device: '%s' is not cpu or cuda", o->device.c_str());
    if (o->max_tokens < 0) die("--max-tokens must be >= 0");
    if (o->temperature < 0) die("--temperature must be >= 0");
    if (o->top_k < 0) die("--top-k must be >= 0");
    if (o->max_prompt < 1) die("--max-prompt must be >= 1");
    if (o->prompt_given && !o->prompt_file.empty()) die("give --prompt or --prompt-file, not both");
}

// ----------------------------------------------------------------------------
// a generator: the model, the recurrent state of B rows, and the logits of
// the last piece fed

struct Generator {
    Model m;
    RecState state;
    int B, piece;               // rows, and the longest run of tokens one forward takes
    std::vector<int> buf;       // [B, piece] the tokens of one piece
    std::vector<float> logits;  // [B, len, vocab] of the last piece fed (len = last_len)
    int last_len;
    bool gpu;
};

static void gen_open(Generator *g, const Config *c, float *params, const std::string &device, int B = 1, int piece = PREFILL_PIECE) {
    g->gpu = device == "cuda";
    g->B = B;
    g->piece = piece;
    if (g->gpu) {
        std::string why;
        if (!gpu::available(&why)) die("--device cuda: %s", why.c_str());
        gpu::model_init(&g->m, c, params);
        free(params);
        gpu::model_alloc_acts(&g->m, B, piece);
        gpu::state_alloc(c, B, &g->state);
    } else {
        cpu::model_init(&g->m, c, params);
        cpu::model_alloc_acts(&g->m, B, piece);
        cpu::state_alloc(c, B, &g->state);
    }
    g->buf.resize((size_t)B * piece);
    g->logits.assign((size_t)B * piece * c->vocab_size, 0.0f);
    g->last_len = 0;
}

static void gen_close(Generator *g) {
    if (g->gpu) { gpu::state_free(&g->state); gpu::model_free(&g->m); }
    else { cpu::state_free(&g->state); cpu::model_free(&g->m); }
}

static void gen_reset(Generator *g) { g->gpu ? gpu::state_zero(&g->m.config, &g->state) : cpu::state_zero(&g->m.config, &g->state); }

// Runs n tokens of each of the B rows (tokens: [B, n]) through the model from
// the current state, in pieces; keeps the logits of the last piece. A piece
// of one token takes the recurrent form, longer ones the chunked form (the
// same math, tested equal).
static void gen_feed(Generator *g, const int *tokens, int n) {
    int B = g->B;
    size_t V = g->m.config.vocab_size;
    for (int at = 0; at < n; at += g->piece) {
        int len = std::min(g->piece, n - at);
        for (int b = 0; b < B; b++) memcpy(&g->buf[(size_t)b * len], tokens + (size_t)b * n + at, len * sizeof(int));
        g->m.mixer_form = len == 1 ? MIX_RECURRENT : MIX_CHUNKED;
        if (g->gpu) {
            gpu::model_forward(&g->m, g->buf.data(), nullptr, B, len, &g->state);
            gpu::logits_to_host(&g->m, g->logits.data());
        } else {
            cpu::model_forward(&g->m, g->buf.data(), nullptr, B, len, &g->state);
            memcpy(g->logits.data(), g->m.acts.logits, (size_t)B * len * V * sizeof(float));
        }
        g->last_len = len;
    }
}
// the logits of row b at position t of the last piece
static const float *gen_logits(const Generator *g, int b, int t) {
    return g->logits.data() + ((size_t)b * g->last_len + t) * g->m.config.vocab_size;
}
static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

// Samples a byte from the logits: greedy at temperature 0, else softmax over
// the top k (all when k = 0) at the given temperature.
static int sample(const float *logits, int V, float temperature, int top_k, Rng *rng) {
    int best = argmax(logits, V);
    if (temperature == 0) return best;
    std::vector<int> idx(V);
    for (int i = 0; i < V; i++) idx[i] = i;
    int k = top_k > 0 ? std::min(top_k, V) : V;
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
    std::vector<double> p(k);
    double sum = 0;
    for (int i = 0; i < k; i++) { p[i] = exp((logits[idx[i]] - logits[best]) / temperature); sum += p[i]; }
    double r = rng_uniform(rng) * sum;
    for (int i = 0; i < k; i++) { r -= p[i]; if (r <= 0) return idx[i]; }
    return idx[k - 1];
}

static void print_byte(int b) {
    if (b == '\n' || b == '\t' || (b >= 32 && b < 127)) putchar(b);
    else printf("<%02x>", b);
}

static int run_generate(const InferOptions *o) {
    if (o->model.empty()) die("--model PATH is needed (see ./infer --help)");
    Config c;
    float *params;
    read_model_or_die(o->model, &c, &params);
    std::string e, prompt = o->prompt;
    if (!o->prompt_file.empty()) {
        std::vector<char> b;
        e = read_file(o->prompt_file, &b, (size_t)o->max_prompt);  // a size check before reading: no /dev/zero, no huge file
        if (!e.empty()) die("--prompt-file (at most --max-prompt %d bytes): %s", o->max_prompt, e.c_str());
        prompt.assign(b.begin(), b.end());
    }
    if ((int64_t)prompt.size() > o->max_prompt)
        die("the prompt has %zu bytes, more than --max-prompt %d allows", prompt.size(), o->max_prompt);
    Generator g;
    gen_open(&g, &c, params, o->device);
    std::vector<int> tokens(prompt.begin(), prompt.end());
    for (int &t : tokens) t = (uint8_t)t;
    Rng rng = {o->seed};
    printf("%s", prompt.c_str());
    fflush(stdout);
    double t0 = now_seconds();
    if (tokens.empty()) tokens.push_back('\n');  // an empty prompt starts from a new line
    gen_feed(&g, tokens.data(), (int)tokens.size());
    double t1 = now_seconds();
    for (int i = 0; i < o->max_tokens; i++) {
        int next = sample(gen_logits(&g, 0, g.last_len - 1), c.vocab_size, o->temperature, o->top_k, &rng);
        print_byte(next);
        fflush(stdout);
        if (i + 1 < o->max_tokens) gen_feed(&g, &next, 1);
    }
    double t2 = now_seconds();
    fprintf(stderr, "\n[prefill %zu tokens: %.0f tok/s | generated %d tokens: %.0f tok/s]\n", tokens.size(),
            tokens.size() / std::max(t1 - t0, 1e-9), o->max_tokens, o->max_tokens / std::max(t2 - t1, 1e-9));
    gen_close(&g);
    return 0;
}

// ----------------------------------------------------------------------------
// --bench: generation speed at batch 1 on a random model of a preset

static int run_bench(const InferOptions *o) {
    std::vector<std::string> names;
    if (!o->preset.empty()) names.push_back(o->preset);
    else names = {"gla-small", "mamba2-small"};
    std::string why;
    if (o->device == "cuda" && !gpu::available(&why)) {
        printf("GPU generation benchmark skipped: %s\n", why.c_str());
        return 0;
    }
    for (const std::string &name : names) {
        Config c;
        if (!preset_config(name, &c)) die("--preset: unknown preset '%s'", name.c_str());
        float *params = cpu::random_params(&c, 1);
        Generator g;
        gen_open(&g, &c, params, o->device);
        Rng rng = {3};
        std::vector<int> prompt(512);
        for (int &t : prompt) t = 32 + rng_int(&rng, 95);
        double t0 = now_seconds();
        gen_feed(&g, prompt.data(), (int)prompt.size());
        double t1 = now_seconds();
        int n = 512;
        for (int i = 0; i < n; i++) {
            int next = sample(gen_logits(&g, 0, g.last_len - 1), c.vocab_size, 0.8f, 0, &rng);
            gen_feed(&g, &next, 1);
        }
        double t2 = now_seconds(), tps = n / (t2 - t1), f = forward_flops_per_token(&c, true);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("%-13s generate B 1 (%s): prefill %6.0f tok/s, generation %6.0f tok/s, %.1f MFLOP/token, %.1f GFLOP/s, peak RSS %.0f MB\n",
               name.c_str(), o->device.c_str(), prompt.size() / (t1 - t0), tps, f / 1e6, tps * f / 1e9, ru.ru_maxrss / 1024.0);
        gen_close(&g);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// --eval: recall and language modelling, with fixed seeds so every model is
// measured on the same samples

#define EVAL_ROWS 32  // samples per forward

// MQAR with n pairs and a gap of filler text: the fraction of query values
// predicted exactly (argmax). About 2560 answers per cell, so the accuracy is
// good to about 1 point.
static double eval_mqar(Generator *g, const Corpus *filler, int n, int gap, float scale, int *answers) {
    int L = 4 * n + gap, samples = (int)ceil(2560.0 * scale / n), B = g->B, V = g->m.config.vocab_size;
    Rng rng = {1000003ull * n + gap};
    std::vector<int> seq((size_t)B * L);
    std::vector<char> is_target((size_t)B * L);
    long right = 0, total = 0;
    for (int done = 0; done < samples; done += B) {
        for (int b = 0; b < B; b++) {
            size_t s0 = rng_u64(&rng) % (filler->bytes.size() - gap);
            mqar_instance(n, filler->bytes.data() + s0, gap, &rng, &seq[(size_t)b * L], &is_target[(size_t)b * L]);
        }
        gen_reset(g);
        gen_feed(g, seq.data(), L);
        for (int b = 0; b < B && done + b < samples; b++)
            for (int t = 1; t < L; t++)
                if (is_target[(size_t)b * L + t]) {
                    right += argmax(gen_logits(g, b, t - 1), V) == seq[(size_t)b * L + t];
                    total++;
                }
    }
    *answers = (int)total;
    return (double)right / total;
}

// Passkey at a context length and depth: the fraction of samples whose 5
// greedy digits are the key.
static double eval_passkey(Generator *g, int length, double depth, int samples, int *count) {
    int B = g->B, V = g->m.config.vocab_size;
    Rng rng = {7919ull * length + (uint64_t)(depth * 100)};
    std::vector<int> prompts((size_t)B * length), next(B);
    std::vector<std::string> answers(B);
    int right = 0, total = 0;
    for (int done = 0; done < samples; done += B) {
        for (int b = 0; b < B; b++) {
            std::string p = passkey_prompt(length, depth, &rng, &answers[b]);
            for (int t = 0; t < length; t++) prompts[(size_t)b * length + t] = (uint8_t)p[t];
        }
        gen_reset(g);
        gen_feed(g, prompts.data(), length);
        std::vector<std::string> got(B);
        for (int i = 0; i < 5; i++) {
            for (int b = 0; b < B; b++) {
                next[b] = argmax(gen_logits(g, b, g->last_len - 1), V);
                got[b] += (char)next[b];
            }
            if (i < 4) gen_feed(g, next.data(), 1);
        }
        for (int b = 0; b < B && done + b < samples; b++) { right += got[b] == answers[b]; total++; }
    }
    *count = total;
    return (double)right / total;
}

static double eval_bpb(Generator *g, const Corpus *val, int T, int max_rows) {
    std::vector<int> in, tg;
    int rows = validation_rows(val, T, max_rows, &in, &tg), B = g->B, V = g->m.config.vocab_size;
    double nats = 0;
    long count = 0;
    std::vector<int> batch((size_t)B * T);
    for (int r = 0; r < rows; r += B) {
        int nb = std::min(B, rows - r);
        for (int b = 0; b < B; b++) memcpy(&batch[(size_t)b * T], &in[(size_t)(r + std::min(b, nb - 1)) * T], T * sizeof(int));
        gen_reset(g);
        gen_feed(g, batch.data(), T);
        for (int b = 0; b < nb; b++)
            for (int t = 0; t < T; t++) {
                const float *l = gen_logits(g, b, t);
                float mx = l[argmax(l, V)];
                double s = 0;
                for (int i = 0; i < V; i++) s += exp((double)l[i] - mx);
                nats += log(s) + mx - l[tg[(size_t)(r + b) * T + t]];
                count++;
            }
    }
    return nats / count / log(2.0);
}

static const int MQAR_N[] = {4, 8, 16, 32, 64};
static const double DEPTHS[] = {0, 0.25, 0.5, 0.75, 1};

static int run_eval(const InferOptions *o) {
    if (o->model.empty()) die("--eval needs --model PATH");
    Config c;
    float *params;
    read_model_or_die(o->model, &c, &params);
    Corpus val;
    // MQAR fillers start anywhere in the first size - gap bytes: at least one such place
    std::string e = load_corpus(o->val, std::max(4096, o->mqar_gap + 1), &val);
    if (!e.empty()) die("--val: %s", e.c_str());
    size_t state = 0;
    for (int l = 0; l < c.n_layer; l++) state += layer_state_floats(&c, l);
    Generator g;
    gen_open(&g, &c, params, o->device, EVAL_ROWS, 512);
    std::string tsv = strf("model\t%s\nfamily\t%s\nparams\t%zu\nstate_floats\t%zu\n", o->model.c_str(), family_name(c.family),
                           g.m.num_params, state);
    double t0 = now_seconds();
    printf("%s: %s, %zu parameters, recurrent state %zu floats\n", o->model.c_str(), family_name(c.family), g.m.num_params, state);
    double bpb = eval_bpb(&g, &val, 512, 64);
    printf("validation: %.4f bits/byte\n", bpb);
    tsv += strf("bpb\t%.5f\n", bpb);
    Series mq[2];
    printf("MQAR accuracy (%%)   n:");
    for (int n : MQAR_N) printf(" %6d", n);
    printf("\n");
    for (int gi = 0; gi < 2; gi++) {
        int gap = gi ? o->mqar_gap : 0;
        mq[gi] = {gi ? strf("gap %d", gap) : "no gap", {}, {}, gi ? 0xD62728u : 0x1F77B4u};
        printf("  gap %4d          ", gap);
        for (int n : MQAR_N) {
            int answers;
            double acc = eval_mqar(&g, &val, n, gap, o->eval_scale, &answers);
            printf(" %6.1f", 100 * acc);
            fflush(stdout);
            tsv += strf("mqar\t%d\t%d\t%.5f\t%d\n", n, gap, acc, answers);
            mq[gi].x.push_back(n);
            mq[gi].y.push_back(100 * acc);
        }
        printf("\n");
    }
    std::vector<int> lengths;
    for (int L = 256; L <= o->passkey_max; L *= 2) lengths.push_back(L);
    int per_cell = std::max(8, (int)(40 * o->eval_scale));
    Series pk{"passkey", {}, {}, 0x2CA02C};
    printf("passkey accuracy (%%), %d samples per depth; depths 0, .25, .5, .75, 1 and mean\n", per_cell);
    for (int L : lengths) {
        printf("  length %5d      ", L);
        double sum = 0;
        for (double d : DEPTHS) {
            int count;
            double acc = eval_passkey(&g, L, d, per_cell, &count);
            printf(" %6.1f", 100 * acc);
            fflush(stdout);
            tsv += strf("passkey\t%d\t%.2f\t%.5f\t%d\n", L, d, acc, count);
            sum += acc;
        }
        printf("  | %6.1f\n", 100 * sum / 5);
        pk.x.push_back(L);
        pk.y.push_back(100 * sum / 5);
    }
    printf("evaluated in %.0fs\n", now_seconds() - t0);
    if (!o->eval_out.empty()) {
        e = write_file_atomic(o->eval_out + ".tsv", {{tsv.data(), tsv.size()}});
        if (e.empty()) e = write_line_chart(o->eval_out + "_mqar.png", "MQAR ACCURACY", "PAIRS N", "%", {mq[0], mq[1]}, true, 0, 100);
        if (e.empty()) e = write_line_chart(o->eval_out + "_passkey.png", "PASSKEY ACCURACY", "CONTEXT BYTES", "%", {pk}, true, 0, 100);
        if (!e.empty()) die("%s", e.c_str());
    }
    gen_close(&g);
    return 0;
}

// ----------------------------------------------------------------------------
// --summarize DIR: the experiment's tables and charts. DIR holds, per family
// (gla, mamba2), kind (base, lpt, statex) and seed, FAMILY-KIND-sSEED.eval.tsv
// from --eval and FAMILY-KIND-sSEED.bin.stats from ./train.

struct Measured {  // one metric over the seeds
    std::vector<double> v;
    std::string cell(int digits) const {
        if (v.empty()) return "-";
        double m = 0, s = 0;
        for (double x : v) m += x;
        m /= v.size();
        for (double x : v) s += (x - m) * (x - m);
        s = v.size() > 1 ? sqrt(s / (v.size() - 1)) : 0;
        return v.size() > 1 ? strf("%.*f ± %.*f", digits, m, digits, s) : strf("%.*f", digits, m);
    }
    double mean() const { double m = 0; for (double x : v) m += x; return v.empty() ? NAN : m / v.size(); }
};

static std::map<std::string, std::string> read_tsv(const std::string &path, std::vector<std::vector<std::string>> *rows) {
    std::vector<char> b;
    std::map<std::string, std::string> kv;
    if (!read_file(path, &b).empty()) return kv;
    std::string text(b.begin(), b.end()), line;
    for (size_t p = 0, q; p < text.size(); p = q + 1) {
        q = text.find('\n', p);
        if (q == std::string::npos) q = text.size();
        std::vector<std::string> f;
        line = text.substr(p, q - p);
        for (size_t a = 0, z; a <= line.size(); a = z + 1) {
            z = line.find('\t', a);
            if (z == std::string::npos) z = line.size();
            f.push_back(line.substr(a, z - a));
        }
        if (f.size() == 2) kv[f[0]] = f[1];
        if (rows) rows->push_back(f);
    }
    return kv;
}

static int run_summarize(const InferOptions *o) {
    const char *kinds[] = {"base", "lpt", "statex"}, *kind_names[] = {"base", "LPT", "StateX"};
    std::string md = "# StateX experiment: results\n\nEach cell is the mean ± standard deviation over the seeds "
                     "(sample std; the number of seeds is in the first table). Accuracies in %.\n";
    int found = 0;
    for (const char *fam : {"gla", "mamba2"}) {
        // metric -> kind -> values over seeds
        std::map<std::string, Measured> m[3];
        std::vector<std::string> order;
        auto add = [&](int k, const std::string &name, double v) {
            if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
            m[k][name].v.push_back(v);
        };
        for (int k = 0; k < 3; k++)
            for (int seed = 1; seed <= 100; seed++) {
                std::string base = strf("%s/%s-%s-s%d", o->summarize.c_str(), fam, kinds[k], seed);
                std::vector<std::vector<std::string>> rows;
                std::map<std::string, std::string> ev = read_tsv(base + ".eval.tsv", &rows);
                if (ev.empty()) continue;
                found++;
                std::map<std::string, std::string> st = read_tsv(base + ".bin.stats", nullptr);
                add(k, "seeds", 1);
                add(k, "parameters", atof(ev["params"].c_str()));
                add(k, "recurrent state (floats)", atof(ev["state_floats"].c_str()));
                if (st.count("wall_seconds")) add(k, "training time of this stage (s)", atof(st["wall_seconds"].c_str()));
                if (st.count("peak_rss_mb")) add(k, "peak memory (MB)", atof(st["peak_rss_mb"].c_str()));
                if (st.count("tokens")) add(k, "training tokens of this stage (M)", atof(st["tokens"].c_str()) / 1e6);
                add(k, "validation bits/byte", atof(ev["bpb"].c_str()));
                std::map<int, std::vector<double>> pk;
                for (auto &r : rows) {
                    if (r.size() == 5 && r[0] == "mqar")
                        add(k, strf("MQAR n=%s%s", r[1].c_str(), r[2] == "0" ? "" : strf(", gap %s", r[2].c_str()).c_str()), 100 * atof(r[3].c_str()));
                    if (r.size() == 5 && r[0] == "passkey") pk[atoi(r[1].c_str())].push_back(atof(r[3].c_str()));
                }
                for (auto &p : pk) {
                    double a = 0;
                    for (double x : p.second) a += x;
                    add(k, strf("passkey %d bytes (mean of depths)", p.first), 100 * a / p.second.size());
                }
            }
        if (m[0].empty() && m[1].empty() && m[2].empty()) continue;
        md += strf("\n## %s\n\n| | %s | %s | %s |\n|---|---|---|---|\n", fam[0] == 'g' ? "GLA" : "Mamba2", kind_names[0], kind_names[1], kind_names[2]);
        for (const std::string &name : order) {
            int digits = name == "seeds" || name.find("parameters") == 0 || name.find("state (") != std::string::npos ||
                         name.find("memory") != std::string::npos ? 0 : name.find("bits") != std::string::npos ? 3 : 1;
            md += "| " + name + " | ";
            for (int k = 0; k < 3; k++) {
                const Measured &x = m[k][name];
                md += (name == "seeds" ? strf("%zu", x.v.size()) : x.cell(digits)) + " | ";
            }
            md += "\n";
        }
        // charts: MQAR against n (without a gap, and in a lighter shade with
        // one), passkey against length; one line per kind
        std::vector<Series> mq, mq_gap, pk;
        uint32_t colors[3] = {0x7F7F7F, 0x1F77B4, 0xD62728}, light[3] = {0xC7C7C7, 0x9EC9E9, 0xF0A0A0};
        for (int k = 0; k < 3; k++) {
            Series a{kind_names[k], {}, {}, colors[k]}, b{kind_names[k], {}, {}, colors[k]};
            Series g{std::string(kind_names[k]) + ", GAP", {}, {}, light[k]};
            for (int n : MQAR_N) {
                auto it = m[k].find(strf("MQAR n=%d", n));
                if (it != m[k].end()) { a.x.push_back(n); a.y.push_back(it->second.mean()); }
                for (auto &[name, x] : m[k])  // whatever gap the evaluation used
                    if (name.rfind(strf("MQAR n=%d, gap ", n), 0) == 0) { g.x.push_back(n); g.y.push_back(x.mean()); break; }
            }
            if (!g.x.empty()) mq_gap.push_back(g);
            for (int L = 256; L <= 1 << 20; L *= 2) {
                auto it = m[k].find(strf("passkey %d bytes (mean of depths)", L));
                if (it != m[k].end()) { b.x.push_back(L); b.y.push_back(it->second.mean()); }
            }
            mq.push_back(a);
            pk.push_back(b);
        }
        mq.insert(mq.end(), mq_gap.begin(), mq_gap.end());
        std::string title = fam[0] == 'g' ? "GLA" : "MAMBA2";
        std::string e = write_line_chart(strf("%s/%s_mqar.png", o->summarize.c_str(), fam), title + ": MQAR ACCURACY", "PAIRS N", "%", mq, true, 0, 100);
        if (e.empty()) e = write_line_chart(strf("%s/%s_passkey.png", o->summarize.c_str(), fam), title + ": PASSKEY ACCURACY", "CONTEXT BYTES", "%", pk, true, 0, 100);
        if (!e.empty()) die("%s", e.c_str());
        md += strf("\n![%s MQAR](%s_mqar.png) ![%s passkey](%s_passkey.png)\n", title.c_str(), fam, title.c_str(), fam);
    }
    if (!found) die("--summarize: no FAMILY-KIND-sSEED.eval.tsv files in %s", o->summarize.c_str());
    std::string path = o->summarize + "/results.md";
    std::string e = write_file_atomic(path, {{md.data(), md.size()}});
    if (!e.empty()) die("%s", e.c_str());
    printf("%s", md.c_str());
    printf("\nwrote %s and the charts beside it\n", path.c_str());
    return 0;
}

int main(int argc, char **argv) {
    InferOptions o;
    parse_args(argc, argv, &o);
    if (o.bench) return run_bench(&o);
    if (o.eval) return run_eval(&o);
    if (!o.summarize.empty()) return run_summarize(&o);
    return run_generate(&o);
}
