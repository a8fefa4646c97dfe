// infer.cpp: generate text from a model file, like llama2.c's run.c.
//
//   1. prefill: the prompt goes through the chunked form in pieces of up to
//      PREFILL_PIECE tokens, each piece starting from the recurrent state the
//      previous one left (so memory does not grow with the prompt);
//   2. generate: one token at a time in the recurrent form, O(1) time and
//      memory per token: the state is all the model remembers.
// `./infer --help` lists the flags.
#include "model.h"
#include "data/tasks.h"
#include <sys/resource.h>

#define PREFILL_PIECE 1024

struct InferOptions {
    std::string model, prompt = "", prompt_file, prompts_file, device = "cpu", preset;
    int max_tokens = 256, top_k = 0, max_prompt = 1 << 20;
    float temperature = 0.8f;
    uint64_t seed = 1;
    bool prompt_given = false, bench = false, profile = false;
    // evaluation
    bool eval = false;
    std::string eval_out, val = "data/val.txt", summarize;
    float eval_scale = 1.0f;
    int passkey_min = 256, passkey_max = 4096, mqar_gap = 128;
};

static void usage() {
    printf(
        "usage: ./infer --model PATH [flags]\n"
        "  --prompt TEXT        the text to continue (default: empty)\n"
        "  --prompt-file FILE   read the prompt from a file\n"
        "  --prompts FILE       batched generation: one prompt per line, all rows generated together\n"
        "  --max-tokens N       bytes to generate (default 256)\n"
        "  --temperature X      0 = greedy (default 0.8)\n"
        "  --top-k K            sample among the K most likely bytes (0 = all)\n"
        "  --seed N             sampling seed (default 1)\n"
        "  --max-prompt N       refuse longer prompts (default 1048576 bytes)\n"
        "  --device cpu|cuda\n"
        "  --bench [--preset gla-small|mamba2-small]   generation speed of a random model\n"
        "  --bench --profile    the same, then each op's share of a batch-1 decode step (CPU)\n"
        "evaluation (README.md \"Recall tasks\"):\n"
        "  --eval               MQAR accuracy (n = 4..64, without and with a gap), passkey accuracy\n"
        "                       (lengths --passkey-min, doubling up to --passkey-max; depths 0..1), validation bits/byte\n"
        "  --eval-out PREFIX    also write PREFIX.tsv, PREFIX_mqar.png, PREFIX_passkey.png\n"
        "  --val FILE           validation text (default data/val.txt)\n"
        "  --eval-scale X       samples x X (default 1: about 2560 answers per MQAR cell)\n"
        "  --passkey-min N --passkey-max N   shortest and longest passkey context (256, 4096)   --mqar-gap N (default 128)\n"
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
        else if (a == "--prompts") o->prompts_file = val();
        else if (a == "--max-tokens") o->max_tokens = to_int(a, val());
        else if (a == "--temperature") o->temperature = to_float(a, val());
        else if (a == "--top-k") o->top_k = to_int(a, val());
        else if (a == "--seed") o->seed = (uint64_t)to_int(a, val());
        else if (a == "--max-prompt") o->max_prompt = to_int(a, val());
        else if (a == "--device") o->device = val();
        else if (a == "--bench") o->bench = true;
        else if (a == "--profile") o->profile = true;
        else if (a == "--preset") o->preset = val();
        else if (a == "--eval") o->eval = true;
        else if (a == "--eval-out") o->eval_out = val();
        else if (a == "--val") o->val = val();
        else if (a == "--eval-scale") o->eval_scale = to_float(a, val());
        else if (a == "--passkey-max") o->passkey_max = to_int(a, val());
        else if (a == "--passkey-min") o->passkey_min = to_int(a, val());
        else if (a == "--mqar-gap") o->mqar_gap = to_int(a, val());
        else if (a == "--summarize") o->summarize = val();
        else die("unknown flag '%s' (see ./infer --help)", a.c_str());
    }
    if (o->eval_scale <= 0 || o->eval_scale > 100) die("--eval-scale must be in (0, 100]");
    // the shortest prompt holds the key sentence and the question, 74 bytes
    if (o->passkey_min < 80) die("--passkey-min %d: a passkey prompt needs at least 80 bytes", o->passkey_min);
    if (o->passkey_max < o->passkey_min) die("--passkey-max %d is below --passkey-min %d", o->passkey_max, o->passkey_min);
    if (o->mqar_gap < 0 || o->mqar_gap > 4096) die("--mqar-gap must be in 0..4096");
    if (o->device != "cpu" && o->device != "cuda") die("--device: '%s' is not cpu or cuda", o->device.c_str());
    if (o->max_tokens < 0) die("--max-tokens must be >= 0");
    if (o->temperature < 0) die("--temperature must be >= 0");
    if (o->top_k < 0) die("--top-k must be >= 0");
    if (o->max_prompt < 1) die("--max-prompt must be >= 1");
    if (o->prompt_given + !o->prompt_file.empty() + !o->prompts_file.empty() > 1)
        die("give one of --prompt, --prompt-file and --prompts");
}

// ----------------------------------------------------------------------------
// a generator: the model, the recurrent state of B rows, and the logits of
// the last piece fed

struct Generator {
    Model m;
    RecState state;
    int B, piece;               // rows, and the longest run of tokens one forward takes
    std::vector<int> buf;       // [B, piece] the tokens of one piece
    std::vector<float> host;    // the logits copied from the GPU
    const float *logits;        // [B, len, vocab] of the last piece fed (len = last_len)
    int last_len;
};

static void gen_open(Generator *g, const Config *c, float *params, const std::string &device, int B = 1, int piece = PREFILL_PIECE) {
    g->B = B;
    g->piece = piece;
    dev::model_init(&g->m, c, params, device);
    dev::model_alloc_acts(&g->m, B, piece);
    dev::state_alloc(&g->m, B, &g->state);
    g->buf.resize((size_t)B * piece);
    g->logits = nullptr;
    g->last_len = 0;
}

static void gen_close(Generator *g) {
    dev::state_free(&g->m, &g->state);
    dev::model_free(&g->m);
}

static void gen_reset(Generator *g) { dev::state_zero(&g->m, &g->state); }

// Runs n tokens of each of the B rows (tokens: [B, n]) through the model from
// the current state, in pieces; keeps the logits of the last piece. A piece
// of one token takes the recurrent form, longer ones the chunked form (the
// same math, tested equal).
static void gen_feed(Generator *g, const int *tokens, int n) {
    int B = g->B;
    for (int at = 0; at < n; at += g->piece) {
        int len = std::min(g->piece, n - at);
        for (int b = 0; b < B; b++) memcpy(&g->buf[(size_t)b * len], tokens + (size_t)b * n + at, len * sizeof(int));
        g->m.mixer_form = len == 1 ? MIX_RECURRENT : MIX_CHUNKED;
        dev::model_forward(&g->m, g->buf.data(), nullptr, B, len, &g->state);
        g->logits = dev::logits_on_host(&g->m, &g->host);
        g->last_len = len;
    }
}
// the logits of row b at position t of the last piece
static const float *gen_logits(const Generator *g, int b, int t) {
    return g->logits + ((size_t)b * g->last_len + t) * g->m.config.vocab_size;
}
static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[best]) best = i;
    return best;
}

// Samples a byte from the logits: greedy at temperature 0, else softmax over
// the top k (all when k = 0) at the given temperature. Without a top k the
// bytes stay in their own order: sorting all 256 took 3 us a token, as much
// as a few percent of a decode step, and any order samples the same softmax.
static int sample(const float *logits, int V, float temperature, int top_k, Rng *rng) {
    int best = argmax(logits, V);
    if (temperature == 0) return best;
    std::vector<int> idx(V);
    for (int i = 0; i < V; i++) idx[i] = i;
    int k = top_k > 0 ? std::min(top_k, V) : V;
    if (k < V) std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return logits[a] > logits[b]; });
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

// A prompt file (--prompt-file, --prompts) of at most --max-prompt bytes, or
// an error naming the flag and the cause. The size is checked before a byte
// is read: no /dev/zero, no huge file.
static std::vector<char> read_prompt_file(const char *flag, const std::string &path, int max_prompt) {
    struct stat st;
    if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size > max_prompt)
        die("%s %s: %lld bytes, more than --max-prompt %d allows", flag, path.c_str(), (long long)st.st_size, max_prompt);
    std::vector<char> b;
    std::string e = read_file(path, &b, (size_t)max_prompt);
    if (!e.empty()) die("%s: %s", flag, e.c_str());
    return b;
}

static int run_generate(const InferOptions *o) {
    if (o->model.empty()) die("--model PATH is needed (see ./infer --help)");
    Config c;
    float *params;
    read_model_or_die("--model", o->model, &c, &params);
    std::string prompt = o->prompt;
    if (!o->prompt_file.empty()) {
        std::vector<char> b = read_prompt_file("--prompt-file", o->prompt_file, o->max_prompt);
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

// --prompts FILE: several prompts at once, one row each. Prompts differ in
// length, so after the part all rows have (fed chunked, in one batch) the rows
// advance in lockstep one token at a time: a row still in its prompt takes its
// next prompt byte, a row past it its sampled byte. Row b samples with seed
// --seed + b. The rows are printed when all are done.
static int run_generate_batch(const InferOptions *o) {
    if (o->model.empty()) die("--model PATH is needed (see ./infer --help)");
    std::vector<char> b = read_prompt_file("--prompts", o->prompts_file, o->max_prompt);
    std::vector<std::vector<int>> prompts;
    std::string text(b.begin(), b.end());
    for (size_t p = 0, q; p < text.size(); p = q + 1) {
        q = text.find('\n', p);
        if (q == std::string::npos) q = text.size();
        size_t end = q > p && text[q - 1] == '\r' ? q - 1 : q;  // a line ending in \r\n (a file written on Windows)
        std::vector<int> row(text.begin() + p, text.begin() + end);
        for (int &t : row) t = (uint8_t)t;
        if (row.empty()) row.push_back('\n');
        prompts.push_back(row);
    }
    int B = (int)prompts.size();
    if (B < 1 || B > 256) die("--prompts: %s has %d lines; 1 to 256 prompts, one per line", o->prompts_file.c_str(), B);
    Config c;
    float *params;
    read_model_or_die("--model", o->model, &c, &params);
    Generator g;
    gen_open(&g, &c, params, o->device, B);
    size_t common = prompts[0].size(), longest = 0;
    for (auto &p : prompts) { common = std::min(common, p.size()); longest = std::max(longest, p.size()); }
    std::vector<int> block((size_t)B * common), step(B);
    for (int r = 0; r < B; r++) std::copy(prompts[r].begin(), prompts[r].begin() + common, block.begin() + (size_t)r * common);
    double t0 = now_seconds();
    gen_feed(&g, block.data(), (int)common);
    std::vector<Rng> rng(B);
    for (int r = 0; r < B; r++) rng[r] = Rng{o->seed + (uint64_t)r};
    std::vector<std::string> out(B);
    int steps = (int)(longest - common) + o->max_tokens;
    for (int i = 0; i < steps; i++) {
        size_t pos = common + i;  // the position each row's next token takes
        for (int r = 0; r < B; r++) {
            int sampled = sample(gen_logits(&g, r, g.last_len - 1), c.vocab_size, o->temperature, o->top_k, &rng[r]);
            bool in_prompt = pos < prompts[r].size();
            bool generating = !in_prompt && (int)(pos - prompts[r].size()) < o->max_tokens;
            step[r] = in_prompt ? prompts[r][pos] : sampled;
            if (generating) out[r] += (char)sampled;
        }
        if (i + 1 < steps) gen_feed(&g, step.data(), 1);
    }
    double t1 = now_seconds();
    for (int r = 0; r < B; r++) {
        printf("--- prompt %d\n", r + 1);
        for (int t : prompts[r]) print_byte(t);
        for (char ch : out[r]) print_byte((uint8_t)ch);
        printf("\n");
    }
    fprintf(stderr, "[%d rows, %d tokens each: %.0f tok/s over all rows]\n", B, o->max_tokens,
            (double)B * o->max_tokens / std::max(t1 - t0, 1e-9));
    gen_close(&g);
    return 0;
}

// ----------------------------------------------------------------------------
// the rest of ./infer: --bench, --eval and --summarize (they use the
// Generator above)
#include "tools/infer_tools.h"

int main(int argc, char **argv) {
    InferOptions o;
    parse_args(argc, argv, &o);
    if (o.bench) return run_bench(&o);
    if (o.eval) return run_eval(&o);
    if (!o.summarize.empty()) return run_summarize(&o);
    if (!o.prompts_file.empty()) return run_generate_batch(&o);
    return run_generate(&o);
}
