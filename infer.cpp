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
#include <omp.h>
#include <sys/resource.h>

#define PREFILL_PIECE 1024

struct InferOptions {
    std::string model, prompt = "", prompt_file, device = "cpu", preset;
    int max_tokens = 256, top_k = 0, max_prompt = 1 << 20;
    float temperature = 0.8f;
    uint64_t seed = 1;
    bool prompt_given = false, bench = false;
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
        "  --bench [--preset gla-small|mamba2-small]   generation speed of a random model\n");
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
        else die("unknown flag '%s' (see ./infer --help)", a.c_str());
    }
    if (o->device != "cpu" && o->device != "cuda") die("--device: '%s' is not cpu or cuda", o->device.c_str());
    if (o->max_tokens < 0) die("--max-tokens must be >= 0");
    if (o->temperature < 0) die("--temperature must be >= 0");
    if (o->top_k < 0) die("--top-k must be >= 0");
    if (o->max_prompt < 1) die("--max-prompt must be >= 1");
    if (o->prompt_given && !o->prompt_file.empty()) die("give --prompt or --prompt-file, not both");
}

// ----------------------------------------------------------------------------
// a generator: the model, its recurrent state and the logits of the last token

struct Generator {
    Model m;
    RecState state;
    std::vector<float> logits;  // [vocab] of the last position
    bool gpu;
};

static void gen_open(Generator *g, const Config *c, float *params, const std::string &device) {
    g->gpu = device == "cuda";
    if (g->gpu) {
        std::string why;
        if (!gpu::available(&why)) die("--device cuda: %s", why.c_str());
        gpu::model_init(&g->m, c, params);
        free(params);
        gpu::model_alloc_acts(&g->m, 1, PREFILL_PIECE);
        gpu::state_alloc(c, 1, &g->state);
    } else {
        cpu::model_init(&g->m, c, params);
        cpu::model_alloc_acts(&g->m, 1, PREFILL_PIECE);
        cpu::state_alloc(c, 1, &g->state);
    }
    g->logits.assign(c->vocab_size, 0.0f);
}

static void gen_close(Generator *g) {
    if (g->gpu) { gpu::state_free(&g->state); gpu::model_free(&g->m); }
    else { cpu::state_free(&g->state); cpu::model_free(&g->m); }
}

// Runs tokens [0, n) through the model from the current state; keeps the
// logits of the last one. n == 1 takes the recurrent form, longer runs the
// chunked form (the same math, tested equal).
static void gen_feed(Generator *g, const int *tokens, int n) {
    int V = g->m.config.vocab_size;
    for (int at = 0; at < n; at += PREFILL_PIECE) {
        int len = std::min(PREFILL_PIECE, n - at);
        g->m.mixer_form = len == 1 ? MIX_RECURRENT : MIX_CHUNKED;
        if (g->gpu) {
            gpu::model_forward(&g->m, tokens + at, nullptr, 1, len, &g->state);
            std::vector<float> all((size_t)len * V);
            gpu::logits_to_host(&g->m, all.data());
            memcpy(g->logits.data(), all.data() + (size_t)(len - 1) * V, V * sizeof(float));
        } else {
            cpu::model_forward(&g->m, tokens + at, nullptr, 1, len, &g->state);
            memcpy(g->logits.data(), g->m.acts.logits + (size_t)(len - 1) * V, V * sizeof(float));
        }
    }
}

// Samples a byte from the logits: greedy at temperature 0, else softmax over
// the top k (all when k = 0) at the given temperature.
static int sample(const std::vector<float> &logits, float temperature, int top_k, Rng *rng) {
    int V = (int)logits.size();
    int best = 0;
    for (int i = 1; i < V; i++) if (logits[i] > logits[best]) best = i;
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
    std::string e = read_model_file(o->model, &c, &params);
    if (!e.empty()) die("%s", e.c_str());
    std::string prompt = o->prompt;
    if (!o->prompt_file.empty()) {
        std::vector<char> b;
        e = read_file(o->prompt_file, &b);
        if (!e.empty()) die("--prompt-file: %s", e.c_str());
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
        int next = sample(g.logits, o->temperature, o->top_k, &rng);
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
    for (const std::string &name : names) {
        Config c;
        if (!preset_config(name, &c)) die("--preset: unknown preset '%s'", name.c_str());
        Model h;
        cpu::model_init(&h, &c, nullptr);
        cpu::model_random_init(&h, 1);
        float *params = h.params;
        h.params = nullptr;
        cpu::model_free(&h);
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
            int next = sample(g.logits, 0.8f, 0, &rng);
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

int main(int argc, char **argv) {
    InferOptions o;
    parse_args(argc, argv, &o);
    if (o.bench) return run_bench(&o);
    return run_generate(&o);
}
