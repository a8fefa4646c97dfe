// train.cpp: train a GLA or Mamba2 byte-level language model; expand its state
// with StateX and post-train it; check parity with an outside reference
// (--debug-state); measure training speed (--bench). `./train --help` lists
// the flags.
//
// Outputs of a training run, for --out PATH:
//   PATH        the model file (README.md "File formats")
//   PATH.opt    optimizer state for --resume (moments, step, the run's flags, history)
//   PATH.png    the loss curve;  PATH.csv  the same numbers as text
//   PATH.stats  wall time, peak memory, tokens, parameters, state size of the run
// Every file is written to a temporary name and renamed, so an interrupted run
// or a full disk never leaves a half-written checkpoint.
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "model.h"
#include "tools/chart.h"
#include "tools/bench.h"
#include "tools/profile.h"
#include "data/tasks.h"
#include <omp.h>
#include <sys/stat.h>
#include <sys/file.h>

// ----------------------------------------------------------------------------
// options

struct Options {
    // the model
    std::string preset, init, resume;
    Config config;                 // for a new model (from --preset and the size flags)
    bool config_given = false;     // any size flag given
    // data
    std::string data = "data/train.txt", val = "data/val.txt";
    RecallMix mix;
    // training
    int steps = -1, batch = 8, seq_len = 256, warmup = 100, eval_every = 100, eval_rows = 64, save_every = 200, stop_at = 0;
    float lr = 2e-3f, min_lr_frac = 0.1f, grad_clip = 1.0f;
    AdamWConfig adamw;
    uint64_t seed = 1;
    std::string out = "out/model.bin", device = "cpu";
    bool quiet = false;
    int log_every = 50, sample_chars = 64;  // progress lines in a log; sample bytes at each evaluation
    // StateX
    std::string expand_mode;
    int expand_every = 0, expand_factor = 4;
    bool expand_factor_given = false, train_only_expanded = false;
    int heads_values = 0, d_state_values = 0;  // how many per-layer values --heads and --d-state gave
    float expanded_lr_scale = 1.0f;
    // other jobs
    std::string debug_state, dump_state;
    bool bench = false, profile = false;
    std::vector<std::string> run_flags;  // the flags that define a run, stored for --resume
};

// The flags that fix a model's sizes: a run that takes its model from a file
// (--init, --resume) refuses them.
static const char *SIZE_FLAGS[] = {"--preset", "--family", "--d-model", "--n-layer", "--untied", "--key-dim", "--value-dim",
                                   "--heads", "--gate-rank", "--mlp-hidden", "--d-inner", "--headdim", "--d-state", "--d-conv"};
static const char *first_size_flag(const std::vector<std::string> &args) {
    for (const std::string &a : args)
        for (const char *f : SIZE_FLAGS)
            if (a == f) return f;
    return "--preset";
}

static void usage() {
    printf(
        "usage: ./train [flags]\n"
        "model:\n"
        "  --preset NAME        tiny-mamba2 (default), tiny-gla, gla-small, mamba2-small, gla-1.3b, mamba2-1.3b,\n"
        "                       and the experiment's exp-gla, exp-mamba2\n"
        "  --family gla|mamba2  --d-model N  --n-layer N  --untied\n"
        "  GLA:    --key-dim N --value-dim N --heads N --gate-rank N --mlp-hidden N\n"
        "  Mamba2: --d-inner N --headdim N --d-state N --d-conv N\n"
        "  --heads and --d-state also take one value per layer, N0,N1,... (the last repeats)\n"
        "  --init MODEL         start from a model file instead of a new model\n"
        "  --resume PATH        continue the run whose checkpoint is PATH (and PATH.opt) exactly\n"
        "data:\n"
        "  --data FILE          training text (default data/train.txt)   --val FILE (default data/val.txt)\n"
        "  --recall-frac F      fraction of rows that hold a recall task (default 0)\n"
        "  --passkey-share F    of those, the passkey share (default 0; the rest MQAR)\n"
        "  --mqar-min N --mqar-max N --mqar-gap N   MQAR pairs and filler gap (4, 32, 0)\n"
        "training:\n"
        "  --steps N (1200; with --expand 0: expand only)  --batch B (8)  --seq-len T (256)  --seed N (1)\n"
        "  --lr X (2e-3, the peak)  --warmup N (100 steps up to it)  --min-lr-frac X (0.1: of lr, the cosine's end)\n"
        "  --weight-decay X (0.1)  --grad-clip X (1; 0 = none)  --device cpu|cuda (cpu)\n"
        "  --eval-every N (100)  --eval-rows N (64)  --save-every N (200)  --stop-at N (stop after step N, as if interrupted)\n"
        "  --out PATH           checkpoint (default out/model.bin)\n"
        "  --log-every N        a progress line every N steps when not on a terminal (default 50; 0 = evaluations,\n"
        "                       the first and the last step)\n"
        "  --sample-chars N     at each evaluation print N bytes the model generates (default 64; 0 = none)\n"
        "  --quiet              only the evaluation lines, no samples\n"
        "StateX:\n"
        "  --expand MODE        GLA: reinit|merge; Mamba2: reinit|copy|zero|grow (needs --init)\n"
        "  --expand-every K     expand layers 0, K, 2K, ... (needed with --expand)   --expand-factor E  (Mamba2, default 4)\n"
        "  --train-only-expanded   post-train only the expanded layers' token mixing\n"
        "  --expanded-lr-scale X   their learning rate is X times --lr\n"
        "  Without --steps, --expand only writes the expanded model to --out.\n"
        "other:\n"
        "  --debug-state IN --dump-state OUT   one forward/backward on --init MODEL with IN's tokens\n"
        "  --bench              training speed of --preset (default: gla-small and mamba2-small) at B 8, T 512;\n"
        "                       with size flags, of that model; --batch, --seq-len set B, T. With --device cuda\n"
        "                       the default adds gla-1.3b and mamba2-1.3b, and a model of d_model >= 2048 runs at B 1, T 2048\n"
        "  --bench --profile    the same, with the share of step time of every op (CPU)\n");
}

static void parse_args(const std::vector<std::string> &args, Options *o) {
    Config *c = &o->config;
    for (size_t i = 0; i + 1 < args.size(); i++)  // the preset first, so size flags adjust it wherever they stand
        if (args[i] == "--preset") {
            o->preset = args[i + 1];
            if (!preset_config(o->preset, c)) die("unknown preset '%s' (see ./train --help)", o->preset.c_str());
        }
    for (size_t i = 0; i < args.size(); i++) {
        const std::string &a = args[i];
        auto val = [&]() -> std::string {
            if (i + 1 >= args.size()) die("%s needs a value (see ./train --help)", a.c_str());
            return args[++i];
        };
        // flags that shape the run are remembered for --resume
        size_t first = i;
        bool run_flag = true;
        // "N" sets every layer; "N0,N1,..." sets layer by layer (the last value
        // repeats), so a from-scratch model can have StateX's per-layer shape
        auto per_layer = [&](const std::string &flag, int *layers) {  // returns how many values were given
            std::string v = val();
            size_t at = 0;
            for (int l = 0; l < MAX_LAYER; l++) {
                size_t comma = v.find(',', at);
                layers[l] = to_int(flag, v.substr(at, comma == std::string::npos ? std::string::npos : comma - at));
                if (comma == std::string::npos) { for (int k = l + 1; k < MAX_LAYER; k++) layers[k] = layers[l]; return l + 1; }
                at = comma + 1;
                if (l == MAX_LAYER - 1) die("%s: more than %d layers in '%s'", flag.c_str(), MAX_LAYER, v.c_str());
            }
            return MAX_LAYER;
        };
        if (a == "--help" || a == "-h") { usage(); exit(0); }
        else if (a == "--preset") val();  // done above
        else if (a == "--family") {
            std::string f = val();
            if (f == "gla") c->family = FAMILY_GLA; else if (f == "mamba2") c->family = FAMILY_MAMBA2;
            else die("--family: '%s' is not gla or mamba2", f.c_str());
            o->config_given = true;
        }
        else if (a == "--d-model") { c->d_model = to_int(a, val()); o->config_given = true; }
        else if (a == "--n-layer") { c->n_layer = to_int(a, val()); o->config_given = true; }
        else if (a == "--untied") { c->tied = 0; o->config_given = true; }
        else if (a == "--key-dim") { c->key_dim = to_int(a, val()); o->config_given = true; }
        else if (a == "--value-dim") { c->value_dim = to_int(a, val()); o->config_given = true; }
        else if (a == "--heads") { o->heads_values = per_layer(a, c->n_head); o->config_given = true; }
        else if (a == "--gate-rank") { c->gate_rank = to_int(a, val()); o->config_given = true; }
        else if (a == "--mlp-hidden") { c->mlp_hidden = to_int(a, val()); o->config_given = true; }
        else if (a == "--d-inner") { c->d_inner = to_int(a, val()); o->config_given = true; }
        else if (a == "--headdim") { c->headdim = to_int(a, val()); o->config_given = true; }
        else if (a == "--d-state") { o->d_state_values = per_layer(a, c->d_state); o->config_given = true; }
        else if (a == "--d-conv") { c->d_conv = to_int(a, val()); o->config_given = true; }
        else if (a == "--init") o->init = val();
        else if (a == "--data") o->data = val();
        else if (a == "--val") o->val = val();
        else if (a == "--recall-frac") o->mix.frac = to_float(a, val());
        else if (a == "--passkey-share") o->mix.passkey_share = to_float(a, val());
        else if (a == "--mqar-min") o->mix.mqar_min = to_int(a, val());
        else if (a == "--mqar-max") o->mix.mqar_max = to_int(a, val());
        else if (a == "--mqar-gap") o->mix.mqar_gap_max = to_int(a, val());
        else if (a == "--steps") {
            o->steps = to_int(a, val());
            if (o->steps < 0) die("--steps %d must be >= 0", o->steps);  // -1 inside means "not given"
        }
        else if (a == "--batch") o->batch = to_int(a, val());
        else if (a == "--seq-len") o->seq_len = to_int(a, val());
        else if (a == "--lr") o->lr = to_float(a, val());
        else if (a == "--min-lr-frac") o->min_lr_frac = to_float(a, val());
        else if (a == "--warmup") o->warmup = to_int(a, val());
        else if (a == "--weight-decay") o->adamw.weight_decay = to_float(a, val());
        else if (a == "--grad-clip") o->grad_clip = to_float(a, val());
        else if (a == "--seed") o->seed = (uint64_t)to_int(a, val());
        else if (a == "--eval-every") o->eval_every = to_int(a, val());
        else if (a == "--eval-rows") o->eval_rows = to_int(a, val());
        else if (a == "--save-every") o->save_every = to_int(a, val());
        else if (a == "--expand") o->expand_mode = val();
        else if (a == "--expand-every") o->expand_every = to_int(a, val());
        else if (a == "--expand-factor") { o->expand_factor = to_int(a, val()); o->expand_factor_given = true; }
        else if (a == "--train-only-expanded") o->train_only_expanded = true;
        else if (a == "--expanded-lr-scale") o->expanded_lr_scale = to_float(a, val());
        else {
            run_flag = false;  // the rest belong to this invocation only
            if (a == "--resume") o->resume = val();
            else if (a == "--out") o->out = val();
            else if (a == "--device") o->device = val();
            else if (a == "--stop-at") o->stop_at = to_int(a, val());
            else if (a == "--quiet") o->quiet = true;
            else if (a == "--log-every") o->log_every = to_int(a, val());
            else if (a == "--sample-chars") o->sample_chars = to_int(a, val());
            else if (a == "--debug-state") o->debug_state = val();
            else if (a == "--dump-state") o->dump_state = val();
            else if (a == "--bench") o->bench = true;
            else if (a == "--profile") o->profile = true;
            else die("unknown flag '%s' (see ./train --help)", a.c_str());
        }
        if (run_flag) for (size_t j = first; j <= i; j++) o->run_flags.push_back(args[j]);
    }
}

// Checks the numbers a run needs, so a bad flag fails before any work.
static void check_options(const Options *o) {
    if (o->device != "cpu" && o->device != "cuda") die("--device: '%s' is not cpu or cuda", o->device.c_str());
    if (o->batch < 1 || o->batch > 4096) die("--batch %d must be between 1 and 4096", o->batch);
    if (o->seq_len < 1 || o->seq_len > (1 << 20)) die("--seq-len %d must be between 1 and 1048576", o->seq_len);
    if (o->lr <= 0) die("--lr must be positive");
    if (o->min_lr_frac < 0 || o->min_lr_frac > 1) die("--min-lr-frac must be between 0 and 1");
    if (o->warmup < 0) die("--warmup must be >= 0");
    if (o->grad_clip < 0) die("--grad-clip must be >= 0 (0 = no clipping)");
    if (o->eval_rows < 1) die("--eval-rows must be >= 1");
    if (o->mix.frac < 0 || o->mix.frac > 1 || o->mix.passkey_share < 0 || o->mix.passkey_share > 1)
        die("--recall-frac and --passkey-share must be between 0 and 1");
    if (o->mix.mqar_min < 1 || o->mix.mqar_max > 64 || o->mix.mqar_min > o->mix.mqar_max)
        die("MQAR pairs must satisfy 1 <= --mqar-min <= --mqar-max <= 64");
    if (o->mix.mqar_gap_max < 0) die("--mqar-gap must be >= 0");
    if (o->expanded_lr_scale < 0) die("--expanded-lr-scale must be >= 0");
    if (o->adamw.weight_decay < 0) die("--weight-decay %g must be >= 0", o->adamw.weight_decay);
    if (o->save_every < 0) die("--save-every %d must be >= 0 (0 = only at the end)", o->save_every);
    if (o->log_every < 0) die("--log-every %d must be >= 0", o->log_every);
    if (o->sample_chars < 0 || o->sample_chars > 4096) die("--sample-chars %d must be in 0..4096", o->sample_chars);
    if (o->eval_every < 0) die("--eval-every %d must be >= 0 (0 = only at the end)", o->eval_every);
    if (o->stop_at < 0) die("--stop-at %d must be >= 0 (0 = do not stop early)", o->stop_at);
    if (o->expand_every < 0) die("--expand-every %d must be >= 0", o->expand_every);
    if (o->expand_every > 0 && o->expand_mode.empty()) die("--expand-every needs --expand MODE (it says which layers to expand)");
    if (o->expand_factor_given && o->expand_mode.empty()) die("--expand-factor needs --expand MODE (Mamba2's modes grow N by it)");
    if (o->expanded_lr_scale != 1.0f && o->expand_every == 0) die("--expanded-lr-scale needs --expand-every K (which layers)");
    for (auto [flag, given] : {std::pair<const char *, int>{"--heads", o->heads_values}, {"--d-state", o->d_state_values}})
        if (given > o->config.n_layer)
            die("%s: %d values for a model of %d layers (one per layer, or fewer: the last repeats)", flag, given, o->config.n_layer);
    if (o->out.empty() || o->out.back() == '/') die("--out '%s' must name a file, e.g. DIR/model.bin", o->out.c_str());
    struct stat st;
    if (stat(o->out.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) die("--out %s is a directory or device, not a file: give DIR/model.bin", o->out.c_str());
}

// ----------------------------------------------------------------------------
// --debug-state: one forward and backward on the inputs of a debug-state file

static int run_debug_state(const Options *o) {
    if (o->init.empty() || o->dump_state.empty()) die("--debug-state needs --init MODEL and --dump-state OUT");
    Config c;
    float *params;
    read_model_or_die("--init", o->init, &c, &params);
    DebugState s;
    std::string e = read_debug_state(o->debug_state, &s);
    if (!e.empty()) die("%s", e.c_str());
    if (s.vocab_size != c.vocab_size) die("%s: vocab %d, but the model's is %d", o->debug_state.c_str(), s.vocab_size, c.vocab_size);
    Model m;
    dev::model_init(&m, &c, params, o->device);
    dev::model_alloc_acts(&m, s.B, s.T);
    dev::model_forward(&m, s.inputs.data(), s.targets.data(), s.B, s.T);
    dev::model_zero_grad(&m);
    dev::model_backward(&m);
    s.num_params = m.num_params;
    s.loss = m.loss;
    std::vector<float> buf;
    const float *logits = dev::logits_on_host(&m, &buf);
    s.logits.assign(logits, logits + (size_t)s.B * s.T * c.vocab_size);
    const float *grads = dev::grads_on_host(&m, &buf);
    s.grads.assign(grads, grads + m.num_params);
    e = write_debug_state(o->dump_state, &s);
    if (!e.empty()) die("%s", e.c_str());
    printf("%s: B %d, T %d, loss %.6f on %s -> %s\n", o->init.c_str(), s.B, s.T, s.loss, o->device.c_str(), o->dump_state.c_str());
    dev::model_free(&m);
    return 0;
}

// ----------------------------------------------------------------------------
// --bench: training throughput at B 8, T 512 (on a GPU, models of d_model >= 2048 at B 1, T 2048)

static int run_bench(const Options *o) {
    std::vector<std::string> names;
    if (!o->preset.empty()) names.push_back(o->preset);
    else names = {"gla-small", "mamba2-small"};
    int B = 8, T = 512, steps = 8;
    // size flags (--n-layer, --d-state, ..) bench that model, as a run would
    // build it; --batch and --seq-len then set B and T (the main job's model:
    // --preset tiny-mamba2 --n-layer 4 --d-state 16 --batch 4 --seq-len 256)
    auto given = [&](const char *flag) { return std::find(o->run_flags.begin(), o->run_flags.end(), flag) != o->run_flags.end(); };
    if (o->config_given) {
        std::string e = config_problem(&o->config);
        if (!e.empty()) die("model config: %s", e.c_str());
        names = {o->preset.empty() ? "custom" : o->preset + "*"};
    }
    if (given("--batch")) B = o->batch;
    if (given("--seq-len")) T = o->seq_len;
    bool cuda = o->device == "cuda";
    if (!cuda) {
        // Each step is followed by a short GEMM timing, and both figures are
        // medians over the steps: on a shared machine the speed drifts within
        // seconds, so only figures taken side by side make a fair ratio.
        printf("machine: %s\n", machine_line().c_str());
        Ops timed = timed_cpu_ops();  // --profile: the same passes over timed ops
        for (const std::string &name : names) {
            Config c = o->config;  // a preset, or the size flags' model
            if (!o->config_given) preset_config(name, &c);
            reset_peak_rss();  // this model's own peak
            Model m;
            cpu::model_init(&m, &c, nullptr);
            cpu::model_random_init(&m, 1);
            cpu::model_alloc_acts(&m, B, T);
            std::vector<int> in((size_t)B * T), tg((size_t)B * T);
            Rng rng = {7};
            for (size_t i = 0; i < in.size(); i++) { in[i] = rng_int(&rng, 128); tg[i] = rng_int(&rng, 128); }
            AdamWConfig opt;
            double t_total = 0;
            std::vector<double> step_s, gemm;
            op_profile() = OpProfile();
            for (int s = 0; s <= steps; s++) {  // step 0 warms up
                if (s == 1) op_profile() = OpProfile();
                double t0 = now_seconds();
                if (o->profile) {
                    model_forward_pass(&timed, &m, in.data(), tg.data(), B, T, nullptr);
                    cpu::model_zero_grad(&m);
                    model_backward_pass(&timed, &m, in.data(), tg.data());
                    (void)cpu::model_grad_norm(&m);
                    if (!m.adam_m) { m.adam_m = xcalloc_floats(m.num_params); m.adam_v = xcalloc_floats(m.num_params); }
                    model_update_pass(&timed, &m, 1e-4f, 1.0f, s + 1, &opt);
                } else {
                    cpu::model_forward(&m, in.data(), tg.data(), B, T);
                    cpu::model_zero_grad(&m);
                    cpu::model_backward(&m);
                    (void)cpu::model_grad_norm(&m);
                    cpu::model_update(&m, 1e-4f, 1.0f, s + 1, &opt);
                }
                if (s > 0) {
                    step_s.push_back(now_seconds() - t0);
                    t_total += step_s.back();
                    gemm.push_back(cpu::gemm_gflops(B * T, 768, 256, 0.15));
                }
            }
            double tps = B * T / median(step_s), flops = 3 * forward_flops_per_token(&c, false), g = median(gemm);
            printf("%-13s train B %d T %d: %7.0f tokens/s  %5.1f MFLOP/token  %6.1f GFLOP/s = %.0f%% of GEMM %.1f GFLOP/s  peak RSS %.0f MB  params %.2fM\n",
                   name.c_str(), B, T, tps, flops / 1e6, tps * flops / 1e9, 100 * tps * flops / 1e9 / g, g, peak_rss_mb(), m.num_params / 1e6);
            if (o->profile) print_op_profile(t_total, g);
            cpu::model_free(&m);
        }
        printf("  medians of %d steps; GEMM: float32 %d x 768 x 256, the faster of Eigen parallel and our row blocks, %d threads,\n"
               "  timed after each step; model FLOPs/token = 3 x forward; forward = 2 x matmul weights + token mixing\n",
               steps, B * T, omp_get_max_threads());
        return 0;
    }
    std::string why;
    if (!gpu::available(&why)) {
        printf("GPU training benchmark skipped: %s\n", why.c_str());
        return 0;
    }
    if (o->preset.empty() && !o->config_given) names = {"gla-small", "mamba2-small", "gla-1.3b", "mamba2-1.3b"};
    for (const std::string &name : names) {
        Config c = o->config;
        if (!o->config_given) preset_config(name, &c);
        bool big = c.d_model >= 2048;
        int b = big ? 1 : B, t = big ? 2048 : T, n = big ? 1 : 20;
        float *params = cpu::random_params(&c, 1);
        Model m;
        gpu::model_init(&m, &c, params);
        free(params);
        gpu::model_alloc_acts(&m, b, t);
        std::vector<int> in((size_t)b * t), tg((size_t)b * t);
        Rng rng = {7};
        for (size_t i = 0; i < in.size(); i++) { in[i] = rng_int(&rng, 128); tg[i] = rng_int(&rng, 128); }
        AdamWConfig opt;
        double t_total = 0;
        for (int s = 0; s <= n; s++) {
            double t0 = now_seconds();
            gpu::model_forward(&m, in.data(), tg.data(), b, t);
            gpu::model_zero_grad(&m);
            gpu::model_backward(&m);
            gpu::model_update(&m, 1e-4f, 1.0f, s + 1, &opt);
            (void)gpu::model_grad_norm(&m);  // synchronises
            if (s > 0) t_total += now_seconds() - t0;
        }
        double tps = (double)b * t * n / t_total, flops = 3 * forward_flops_per_token(&c, false);
        printf("%-13s GPU train B %d T %d: %9.0f tokens/s  %7.1f MFLOP/token  %8.1f GFLOP/s  peak GPU memory %.2f GB  params %.3fB\n",
               name.c_str(), b, t, tps, flops / 1e6, tps * flops / 1e9, gpu::memory_peak_bytes() / 1e9, m.num_params / 1e9);
        gpu::model_free(&m);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// checkpoints: the model file, plus PATH.opt for resuming

// A checkpoint is the model file PATH and PATH.opt (model.h, write_opt_file).
//
// The pair is saved so that a kill at any moment leaves one that resumes:
//   1. PATH.opt.next, the new optimizer state, written whole and synced;
//   2. PATH, the new model, renamed into place: the commit point;
//   3. PATH.opt.next renamed to PATH.opt.
// Before 2 the old pair stands; after 2, recover_checkpoint() (at the next
// start) finishes step 3. *committed says whether step 2 happened.
static std::string write_checkpoint(const std::string &path, Model *m, int step, const Options *o, const History *h,
                                    bool *committed) {
    *committed = false;
    std::vector<float> pbuf, mbuf, vbuf;
    const float *params = dev::params_on_host(m, &pbuf);
    // the last guard: a state with a NaN or an infinity is never kept as good
    std::string e = nonfinite_problem(&m->config, params);
    if (!e.empty()) return "the parameters to save are not finite: " + e;
    const float *am = m->adam_m, *av = m->adam_v;
    if (dev::on_gpu(m)) {
        mbuf.resize(m->num_params); vbuf.resize(m->num_params);
        gpu::adam_to_host(m, mbuf.data(), vbuf.data());
        am = mbuf.data(); av = vbuf.data();
    } else if (!am) {
        mbuf.assign(m->num_params, 0.0f);
        am = av = mbuf.data();
    }
    std::string next = path + ".opt.next";
    e = write_opt_file(next, step, o->run_flags, params, am, av, m->num_params, h);
    if (!e.empty()) return e;
    e = write_model_file(path, &m->config, params);
    if (!e.empty()) { remove(next.c_str()); return e; }
    *committed = true;
    sync_dir_of(path);  // the model's rename reaches the disk before the .opt's
    if (rename(next.c_str(), (path + ".opt").c_str()) != 0)
        return strf("cannot rename %s to %s.opt: %s", next.c_str(), path.c_str(), strerror(errno));
    sync_dir_of(path);
    return "";
}

// At the start of a run that holds the lock on PATH: finish a save that was
// interrupted after its commit point (see write_checkpoint), drop one that was
// not, and remove the temporary files a kill left behind.
static void recover_checkpoint(const std::string &path) {
    std::string next = path + ".opt.next";
    struct stat st;
    if (stat(next.c_str(), &st) == 0) {
        Config c;
        float *p = nullptr;
        OptState s;
        bool done = read_model_file(path, &c, &p).empty() && read_opt_file(next, p, num_params_of(&c), &s).empty();
        free(p);
        if (done && rename(next.c_str(), (path + ".opt").c_str()) == 0)
            printf("completed the interrupted save of %s (step %d)\n", path.c_str(), s.step);
        else
            remove(next.c_str());
    }
    for (const char *ext : {".tmp", ".opt.tmp", ".opt.next.tmp", ".png.tmp", ".csv.tmp", ".stats.tmp"})
        remove((path + ext).c_str());
}

// The lock on a checkpoint path: flock on PATH.lock, so two runs never write
// one checkpoint. The kernel drops it when the process dies, so a crash never
// blocks a later run; the file itself is removed at exit.
struct PathLock { std::string path; int fd; dev_t dev; ino_t ino; };
static std::vector<PathLock> g_locks;
static void unlock_all() {
    for (PathLock &l : g_locks) { unlink(l.path.c_str()); close(l.fd); }
    g_locks.clear();
}
// Returns false, for a checkpoint only read (read_only), when its directory is
// not writable: nobody can be writing it there.
static bool lock_checkpoint(const std::string &path, const char *flag, bool read_only = false) {
    std::string lp = path + ".lock";
    for (int tries = 0; tries < 100; tries++) {
        int fd = open(lp.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0 && read_only && (errno == EACCES || errno == EROFS || errno == EPERM)) return false;
        if (fd < 0) die("%s %s: cannot create %s (is its directory there and writable?): %s", flag, path.c_str(), lp.c_str(), strerror(errno));
        struct stat a, b;
        fstat(fd, &a);
        for (const PathLock &l : g_locks)
            if (l.dev == a.st_dev && l.ino == a.st_ino) { close(fd); return true; }  // the same file, already ours
        if (flock(fd, LOCK_EX | LOCK_NB) != 0)
            die("%s %s: another run is writing this checkpoint (it holds %s)", flag, path.c_str(), lp.c_str());
        // the lock file may have been removed by its last owner between our open and our lock: then lock the new one
        if (stat(lp.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            if (g_locks.empty()) atexit(unlock_all);
            g_locks.push_back({lp, fd, a.st_dev, a.st_ino});
            return true;
        }
        close(fd);
    }
    die("%s %s: cannot take the lock %s", flag, path.c_str(), lp.c_str());
}

static void write_curve(const std::string &path, const History *h) {
    Series tr{"train", {}, {}, 0x1F77B4}, va{"val", {}, {}, 0xD62728};
    for (size_t i = 0; i < h->step.size(); i++) {
        tr.x.push_back(h->step[i]); tr.y.push_back(h->train_loss[i] / logf(2.0f));
        if (std::isfinite(h->val_bpb[i])) { va.x.push_back(h->step[i]); va.y.push_back(h->val_bpb[i]); }
    }
    std::string e = write_line_chart(path + ".png", "LOSS", "STEP", "BITS/BYTE", {tr, va});
    if (!e.empty()) fprintf(stderr, "warning: %s\n", e.c_str());
    std::string csv = "step,train_loss_nats,val_bits_per_byte\n";
    for (size_t i = 0; i < h->step.size(); i++) csv += strf("%.0f,%.6f,%.6f\n", h->step[i], h->train_loss[i], h->val_bpb[i]);
    e = write_file_atomic(path + ".csv", {{csv.data(), csv.size()}});
    if (!e.empty()) fprintf(stderr, "warning: %s\n", e.c_str());
}

// ----------------------------------------------------------------------------
// the table StateX prints: parameters and recurrent state, before and after
static void print_expansion(const Config *a, const Config *b, const Options *o) {
    bool gla = a->family == FAMILY_GLA;
    size_t pa = num_params_of(a), pb = num_params_of(b), sa = 0, sb = 0;
    printf("StateX %s on every %d%s layer of a %s model: %zu -> %zu parameters (+%zu)\n", o->expand_mode.c_str(),
           o->expand_every, o->expand_every == 1 ? "st" : o->expand_every == 2 ? "nd" : o->expand_every == 3 ? "rd" : "th",
           family_name(a->family), pa, pb, pb - pa);
    printf("  layer  %-16s  %-26s  %s\n", gla ? "heads" : "state size N", "recurrent state (floats)", "bytes after");
    for (int l = 0; l < a->n_layer; l++) {
        size_t x = layer_state_floats(a, l), y = layer_state_floats(b, l);
        sa += x;
        sb += y;
        int ka = gla ? a->n_head[l] : a->d_state[l], kb = gla ? b->n_head[l] : b->d_state[l];
        printf("  %5d  %6d -> %-6d  %10zu -> %-12zu  %11zu%s\n", l, ka, kb, x, y, 4 * y, x != y ? "  expanded" : "");
    }
    printf("  total                    %10zu -> %-12zu  %11zu  (x%.2f)\n", sa, sb, 4 * sb, (double)sb / sa);
}

// ----------------------------------------------------------------------------
// training

static float learning_rate(const Options *o, int step) {
    if (step <= o->warmup) return o->lr * step / std::max(1, o->warmup);
    double p = (double)(step - o->warmup) / std::max(1, o->steps - o->warmup);
    double lo = o->lr * o->min_lr_frac;
    return (float)(lo + 0.5 * (o->lr - lo) * (1.0 + cos(M_PI * std::min(1.0, p))));
}

// Mean loss over fixed validation rows, in bits per byte.
static float validation_bpb(Model *m, const std::vector<int> &in, const std::vector<int> &tg, int rows, int B, int T) {
    double sum = 0;
    int n = 0;
    for (int r = 0; r < rows; r += B) {
        int b = std::min(B, rows - r);
        dev::model_forward(m, in.data() + (size_t)r * T, tg.data() + (size_t)r * T, b, T);
        sum += (double)m->loss * m->n_targets;
        n += m->n_targets;
    }
    return (float)(sum / std::max(1, n) / log(2.0));
}

static std::string eta(double s) {
    if (s < 60) return strf("%.0fs", s);
    if (s < 3600) return strf("%dm%02ds", (int)s / 60, (int)s % 60);
    return strf("%dh%02dm", (int)s / 3600, ((int)s % 3600) / 60);
}

static void make_parent_dir(const std::string &path) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos || slash == 0) return;
    std::string dir = path.substr(0, slash);
    for (size_t p = 1; p <= dir.size(); p++)
        if (p == dir.size() || dir[p] == '/') mkdir(dir.substr(0, p).c_str(), 0755);
}

// Before any work that would be lost: --out's directory exists and is
// writable (the lock file is created in it), no other run writes this
// checkpoint, and what a killed run left there is cleaned up.
static void prepare_out(const std::string &out) {
    make_parent_dir(out);
    lock_checkpoint(out, "--out");
    recover_checkpoint(out);
}

// Training diverged when the loss or the gradient norm is not finite, or the
// loss is far beyond knowing nothing (ln 256 = 5.5 nats): blown-up weights.
#define DIVERGED_LOSS 100.0f
static std::string divergence(float loss, float norm) {
    if (!std::isfinite(loss)) return std::isnan(loss) ? "the loss is NaN" : "the loss is infinite";
    if (loss > DIVERGED_LOSS) return strf("the loss is %.3g nats, beyond %.0f", loss, DIVERGED_LOSS);
    if (!std::isfinite(norm)) return "the gradient norm is not finite";
    return "";
}

// One training run: the model, the data, and where the run stands.
struct TrainRun {
    Options *o;
    Model m;
    Corpus train, val;
    int B, T, start_step;
    std::vector<int> in, tg, vin, vtg;  // a batch; the fixed validation rows
    int vrows;
    History history;
    // The state after step s is saved only once the next step's forward and
    // backward, from that state, give a finite, sane loss and gradient norm:
    // so a checkpoint kept as good never holds a diverged state. The last good
    // one is this run's latest save, else the checkpoint it resumed.
    std::string good;
    int good_step, pending;             // pending: a step whose state waits for that check
};

static std::string last_good(const TrainRun *r) {
    return r->good.empty() ? std::string("no checkpoint of this run was saved")
                           : strf("the last good checkpoint is %s (step %d)", r->good.c_str(), r->good_step);
}

// 1. The starting model: a checkpoint to resume, a model file, or a new config
// (params stays nullptr: drawn on the host once the run is set up).
static void load_start(const Options *o, Config *c, float **params, OptState *resume) {
    *params = nullptr;
    if (!o->resume.empty()) {
        read_model_or_die("--resume", o->resume, c, params);
        std::string e = read_opt_file(o->resume + ".opt", *params, num_params_of(c), resume);
        if (!e.empty()) die("%s", e.c_str());
        printf("resuming %s at step %d\n", o->resume.c_str(), resume->step);
    } else if (!o->init.empty()) {
        if (o->config_given || !o->preset.empty())
            die("--init takes the model's sizes from its file; drop %s (and any other size flag)", first_size_flag(o->run_flags));
        struct stat a, b;
        if (stat(o->init.c_str(), &a) == 0 && stat(o->out.c_str(), &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
            die("--out %s is the --init model itself: the run would overwrite what it starts from; give another --out",
                o->out.c_str());
        read_model_or_die("--init", o->init, c, params);
    } else {
        *c = o->config;
        std::string e = config_problem(c);
        if (!e.empty()) die("model config: %s", e.c_str());
    }
}

// 2. StateX expansion of a given model (not when resuming: the checkpoint is
// already expanded). Returns true when that was all (no --steps): the
// expanded model is written and the run is over.
static bool expand_start(const Options *o, Config *c, float **params) {
    if (o->expand_mode.empty() || !o->resume.empty()) return false;
    if (o->init.empty()) die("--expand needs --init MODEL (the trained model to expand)");
    if (o->expand_every == 0) die("--expand needs --expand-every K (expand layers 0, K, 2K, ...)");
    if (o->expand_factor_given && c->family == FAMILY_GLA)
        die("--expand-factor is for Mamba2's modes; GLA's merge and reinit make one head of all, a factor of H");
    Config ce;
    float *pe;
    std::string e = cpu::expand_model(c, *params, o->expand_mode, o->expand_every, o->expand_factor, o->seed, &ce, &pe);
    if (e.size()) die("%s", e.c_str());
    print_expansion(c, &ce, o);
    free(*params);
    *c = ce;
    *params = pe;
    if (o->steps > 0) return false;
    prepare_out(o->out);
    e = write_model_file(o->out, c, *params);
    if (!e.empty()) die("%s", e.c_str());
    printf("wrote %s\n", o->out.c_str());
    free(*params);
    return true;
}

// 3. The model on its device, the learning-rate factors (frozen tensors and
// the expanded layers' own rate), the resumed AdamW moments, the data.
static void setup_run(TrainRun *r, const Config *c, float *params, const OptState *resume) {
    const Options *o = r->o;
    Model *m = &r->m;
    if (!params) params = cpu::random_params(c, o->seed);  // a new model: initialised on the host
    dev::model_init(m, c, params, o->device);
    if (o->expand_every > 0) {
        for (size_t t = 0; t < m->tensors.size(); t++) {
            const ParamTensor &pt = m->tensors[t];
            bool expanded = pt.is_mixer && pt.layer >= 0 && pt.layer % o->expand_every == 0;
            m->lr_scale[t] = expanded ? o->expanded_lr_scale : (o->train_only_expanded ? 0.0f : 1.0f);
        }
    } else if (o->train_only_expanded) die("--train-only-expanded needs --expand-every K (which layers)");
    if (!resume->m.empty()) {
        if (dev::on_gpu(m)) gpu::adam_from_host(m, resume->m.data(), resume->v.data());
        else {
            m->adam_m = xcalloc_floats(m->num_params);
            m->adam_v = xcalloc_floats(m->num_params);
            memcpy(m->adam_m, resume->m.data(), 4 * m->num_params);
            memcpy(m->adam_v, resume->v.data(), 4 * m->num_params);
        }
    }
    r->B = o->batch;
    r->T = o->seq_len;
    dev::model_alloc_acts(m, r->B, r->T);
    r->in.resize((size_t)r->B * r->T);
    r->tg.resize((size_t)r->B * r->T);
    r->vrows = validation_rows(&r->val, r->T, o->eval_rows, &r->vin, &r->vtg);
    size_t trainable = 0, state = 0;
    for (size_t t = 0; t < m->tensors.size(); t++) if (m->lr_scale[t] > 0) trainable += m->tensors[t].size();
    for (int l = 0; l < c->n_layer; l++) state += layer_state_floats(c, l);
    printf("%s model, %zu parameters (%zu trained), %d layers, state %zu floats; %s, %d threads\n", family_name(c->family),
           m->num_params, trainable, c->n_layer, state, o->device.c_str(), m->n_threads);
    printf("data %s (%zu bytes), val %s (%d rows); %d steps of %d x %d tokens; recall rows %.0f%%\n", r->train.path.c_str(),
           r->train.bytes.size(), r->val.path.c_str(), r->vrows, o->steps, r->B, r->T, 100 * o->mix.frac);
}

// Forward and backward of step `step`'s batch (drawn from the seed and the
// step alone); dies, naming the last good checkpoint, on divergence.
static void forward_backward(TrainRun *r, int step, float *loss, float *norm) {
    Model *m = &r->m;
    sample_batch(&r->train, &r->o->mix, r->o->seed, step, r->B, r->T, r->in.data(), r->tg.data());
    dev::model_forward(m, r->in.data(), r->tg.data(), r->B, r->T);
    *loss = m->loss;
    *norm = NAN;
    if (std::isfinite(*loss) && *loss <= DIVERGED_LOSS) {
        dev::model_zero_grad(m);
        dev::model_backward(m);
        *norm = dev::model_grad_norm(m);
    }
    std::string why = divergence(*loss, *norm);
    if (!why.empty()) die("%s at step %d: training stopped; %s", why.c_str(), step, last_good(r).c_str());
}

static void save(TrainRun *r, int step) {
    bool committed;
    const Options *o = r->o;
    std::string e = write_checkpoint(o->out, &r->m, step, o, &r->history, &committed);
    if (!e.empty()) {
        if (committed) die("saving the checkpoint failed after its model was written: %s; --resume %s completes it (step %d)",
                           e.c_str(), o->out.c_str(), step);
        die("saving the checkpoint failed: %s; %s", e.c_str(), last_good(r).c_str());
    }
    write_curve(o->out, &r->history);
    r->good = o->out;
    r->good_step = step;
    r->pending = 0;
}

// A short sample from the model as it is now (greedy after the prompt "The "),
// printed at each evaluation so one can watch the model learn. It uses the
// recurrent form from a fresh state; training's batches and weights are untouched.
static std::string sample_text(Model *m, int n) {
    RecState st;
    dev::state_alloc(m, 1, &st);
    std::vector<float> host;
    std::string text = "The ";
    std::vector<int> tok(text.begin(), text.end());
    m->mixer_form = MIX_RECURRENT;
    int next = 0;
    for (int i = 0; i < (int)tok.size() + n - 1; i++) {
        int t = i < (int)tok.size() ? tok[i] : next;
        dev::model_forward(m, &t, nullptr, 1, 1, &st);
        const float *logits = dev::logits_on_host(m, &host);
        next = 0;
        for (int v = 1; v < m->config.vocab_size; v++) if (logits[v] > logits[next]) next = v;
        if (i + 1 >= (int)tok.size()) text += next == '\n' ? ' ' : (next >= 32 && next < 127 ? (char)next : '?');
    }
    m->mixer_form = MIX_CHUNKED;
    dev::state_free(m, &st);
    return text;
}

// The progress line of a step. On a terminal one line is rewritten in place;
// otherwise (a log file) a line every --log-every steps. Evaluations, the last
// step and the first always get their own line, and an evaluation a sample.
static void report(TrainRun *r, int step, float loss, float lr, float norm, double tok_s, double eta_s, float vb) {
    const Options *o = r->o;
    static bool tty = isatty(fileno(stdout));
    bool eval = std::isfinite(vb), last = step == o->steps;
    std::string line = strf("step %5d/%d | loss %.4f (%.3f bits/byte) | lr %.2e | norm %6.3f | %6.0f tok/s | eta %s%s", step,
                            o->steps, loss, loss / log(2.0), lr, norm, tok_s, eta(eta_s).c_str(),
                            eval ? strf(" | val %.4f bits/byte", vb).c_str() : "");
    bool own_line = eval || last || step == r->start_step + 1 || (o->log_every > 0 && step % o->log_every == 0);
    if (o->quiet && !eval && !last) return;
    if (tty && !o->quiet) printf("\r%s\033[K%s", line.c_str(), eval || last ? "\n" : "");
    else if (own_line) printf("%s\n", line.c_str());
    if (eval && !o->quiet && o->sample_chars > 0) printf("  sample: %s\n", sample_text(&r->m, o->sample_chars).c_str());
    fflush(stdout);
}

// What the run cost, for the experiment's tables (PATH.stats).
static void write_stats(TrainRun *r, double wall) {
    const Config *c = &r->m.config;
    size_t state = 0;
    for (int l = 0; l < c->n_layer; l++) state += layer_state_floats(c, l);
    int steps = r->o->steps - r->start_step;
    std::string stats = strf("wall_seconds\t%.1f\npeak_rss_mb\t%.0f\nsteps\t%d\ntokens\t%lld\nparams\t%zu\nstate_floats\t%zu\n", wall,
                             peak_rss_mb(), steps, (long long)steps * r->B * r->T, r->m.num_params, state);
    std::string e = write_file_atomic(r->o->out + ".stats", {{stats.data(), stats.size()}});
    if (!e.empty()) fprintf(stderr, "warning: %s\n", e.c_str());
}

static int run_training(Options *o) {
    TrainRun run;
    TrainRun *r = &run;
    r->o = o;
    Config c;
    float *params;
    OptState resume;
    load_start(o, &c, &params, &resume);
    r->start_step = o->resume.empty() ? 0 : resume.step;
    r->history = resume.history;
    if (expand_start(o, &c, &params)) return 0;
    if (o->steps <= 0) die("--steps must be positive");
    if (r->start_step > o->steps) die("the checkpoint is at step %d, past --steps %d", r->start_step, o->steps);
    if (r->start_step == o->steps) {
        // a finished run: resuming it again is no error. A kill after the last
        // checkpoint but before the end may have left its loss curve a step behind.
        if (o->out == o->resume) { prepare_out(o->out); write_curve(o->out, &r->history); }
        printf("the checkpoint is at step %d of --steps %d: the run is complete (a larger --steps trains on)\n",
               r->start_step, o->steps);
        free(params);
        return 0;
    }
    std::string e = load_corpus(o->data, (size_t)o->seq_len + 1, &r->train);
    if (!e.empty()) die("--data: %s", e.c_str());
    e = load_corpus(o->val, (size_t)o->seq_len + 1, &r->val);
    if (!e.empty()) die("--val: %s", e.c_str());
    prepare_out(o->out);
    setup_run(r, &c, params, &resume);
    r->good = o->resume;
    r->good_step = r->start_step;
    r->pending = 0;

    // 4. the loop: forward, backward, the check, the pending save, the update
    bool stopped = false;
    double t_start = now_seconds();
    for (int step = r->start_step + 1; step <= o->steps; step++) {
        double t0 = now_seconds();
        float loss, norm;
        forward_backward(r, step, &loss, &norm);
        if (r->pending) save(r, r->pending);
        float scale = (o->grad_clip > 0 && norm > o->grad_clip) ? o->grad_clip / norm : 1.0f;
        float lr = learning_rate(o, step);
        dev::model_update(&r->m, lr, scale, step, &o->adamw);
        double dt = now_seconds() - t0, elapsed = now_seconds() - t_start;
        float vb = NAN;
        if ((o->eval_every > 0 && step % o->eval_every == 0) || step == o->steps)
            vb = validation_bpb(&r->m, r->vin, r->vtg, r->vrows, r->B, r->T);
        r->history.step.push_back((float)step);
        r->history.train_loss.push_back(loss);
        r->history.val_bpb.push_back(vb);
        report(r, step, loss, lr, norm, r->B * r->T / dt, elapsed / (step - r->start_step) * (o->steps - step), vb);
        bool stop = o->stop_at > 0 && step == o->stop_at;
        if ((o->save_every > 0 && step % o->save_every == 0) || step == o->steps || stop) r->pending = step;
        if (stop) { stopped = true; break; }
    }
    // 5. the last save, after the check the next step would have made (a resumed run makes the same one)
    if (r->pending) {
        float loss, norm;
        forward_backward(r, r->pending + 1, &loss, &norm);
        save(r, r->pending);
        if (stopped)
            printf("stopped after step %d as asked (--stop-at); continue with --resume %s\n", r->good_step, o->out.c_str());
    }
    double wall = now_seconds() - t_start;
    printf("done in %s; model %s, loss curve %s.png, peak RSS %.0f MB\n", eta(wall).c_str(), o->out.c_str(), o->out.c_str(), peak_rss_mb());
    write_stats(r, wall);
    dev::model_free(&r->m);
    return 0;
}

int main(int argc, char **argv) {
    Options o;
    preset_config("tiny-mamba2", &o.config);  // the default model
    std::vector<std::string> args(argv + 1, argv + argc);
    parse_args(args, &o);
    if (!o.resume.empty()) {
        // what the checkpoint fixes cannot change when resuming
        for (const std::string &a : args) {
            bool fixed = a == "--expand" || a == "--expand-every" || a == "--expand-factor" || a == "--init";
            for (const char *f : SIZE_FLAGS) fixed |= a == f;
            if (fixed) die("%s: not with --resume: the checkpoint's model is fixed (and already expanded, if its run expanded)", a.c_str());
        }
        // the lock first: this run may finish the checkpoint's interrupted save
        if (lock_checkpoint(o.resume, "--resume", true)) recover_checkpoint(o.resume);
        struct stat st;
        if (stat((o.resume + ".opt").c_str(), &st) != 0 && errno == ENOENT && stat(o.resume.c_str(), &st) == 0)
            die("--resume %s: there is no %s.opt beside it, so no run to continue (a model written by --expand alone has "
                "none): start a run from it with --init", o.resume.c_str(), o.resume.c_str());
        // the stored flags of the run first, then this command line's on top
        Config c;
        float *p;
        read_model_or_die("--resume", o.resume, &c, &p);
        OptState s;
        std::string e = read_opt_file(o.resume + ".opt", p, num_params_of(&c), &s);
        free(p);
        if (!e.empty()) die("%s", e.c_str());
        Options stored;  // the stored flags alone, checked as flags: an error names the file
        preset_config("tiny-mamba2", &stored.config);
        die_context() = o.resume + ".opt: stored flags: ";
        parse_args(s.flags, &stored);
        if (stored.run_flags.size() != s.flags.size()) die("holds flags that do not define a run (such as --out)");
        die_context().clear();
        Options r;
        preset_config("tiny-mamba2", &r.config);
        std::vector<std::string> all = s.flags;
        all.insert(all.end(), args.begin(), args.end());
        parse_args(all, &r);
        bool out_given = false;
        for (const std::string &a : args) out_given |= a == "--out";
        if (!out_given) r.out = r.resume;
        o = r;
    }
    if (o.steps < 0) o.steps = o.expand_mode.empty() ? 1200 : 0;  // --expand alone only writes the expanded model
    check_options(&o);
    if (!o.debug_state.empty()) return run_debug_state(&o);
    if (o.bench) return run_bench(&o);
    return run_training(&o);
}
