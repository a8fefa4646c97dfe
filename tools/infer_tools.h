// tools/infer_tools.h: what ./infer does besides generating text, kept out of
// infer.cpp so that it reads like llama2.c's run.c:
//   --bench      generation speed of a preset
//   --eval       recall (MQAR, passkey) and bits/byte of a model, with fixed seeds
//   --summarize  the StateX experiment's tables and charts from --eval's files
// infer.cpp includes it after its Generator (gen_open, gen_feed, ...), which
// these use; it is not a header for anything else.
#pragma once
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include "chart.h"
#include "bench.h"
#include "profile.h"
#include <map>

// ----------------------------------------------------------------------------
// --bench: generation speed on a random model of a preset. At batch 1 a decode
// step reads every weight once (the lm head included) and reads and writes the
// recurrent state, so its speed limit is the read bandwidth over those bytes;
// the bandwidth is measured in the same run on a buffer of the same size.
// Batched generation (B 8) reads the weights once for 8 tokens.

// Times prefill of 512 tokens, then `rounds` rounds of `n` decode steps of B
// rows. Returns the prefill's tokens/s and each round's decode tokens/s; with
// bytes > 0, each round is followed by a short read-bandwidth timing over that
// many bytes, on the run's threads and on one (GB/s). The speed of these shared
// machines drifts within seconds, so a bandwidth timed once beside a whole
// generation made the ratio move by 10 points between runs of one binary;
// rounds timed side by side, and their medians, do not. An untimed first pass
// (the prefill and 16 steps) warms the machine up (a cold prefill measured
// half the speed) and gives the peak memory, in MB, before any bandwidth
// buffer exists.
static double bench_generate(Generator *g, int rounds, int n, double bytes, std::vector<double> *decode_tps,
                             std::vector<double> *bw, std::vector<double> *bw1, double *peak_mb) {
    int B = g->B, V = g->m.config.vocab_size;
    Rng rng = {3};
    std::vector<int> prompt((size_t)B * 512), next(B);
    for (int &t : prompt) t = 32 + rng_int(&rng, 95);
    auto decode = [&](int steps) {
        for (int i = 0; i < steps; i++) {
            for (int b = 0; b < B; b++) next[b] = sample(gen_logits(g, b, g->last_len - 1), V, 0.8f, 0, &rng);
            gen_feed(g, next.data(), 1);
        }
    };
    gen_feed(g, prompt.data(), 512);
    decode(16);
    *peak_mb = peak_rss_mb();
    gen_reset(g);
    double t0 = now_seconds();
    gen_feed(g, prompt.data(), 512);
    double prefill_tps = B * 512.0 / (now_seconds() - t0);
    for (int r = 0; r < rounds; r++) {
        t0 = now_seconds();
        decode(n);
        decode_tps->push_back((double)B * n / (now_seconds() - t0));
        if (bytes > 0) {
            bw->push_back(read_bandwidth_gbs((size_t)bytes, omp_get_max_threads(), 0.05));
            bw1->push_back(read_bandwidth_gbs((size_t)bytes, 1, 0.05));
        }
    }
    return prefill_tps;
}

// --profile: 512 more batch-1 decode steps over timed ops (profile.h), run as
// cpu::model_forward runs them (one parallel region per step, where it uses one).
static void profile_decode(Generator *g) {
    Ops timed = timed_cpu_ops();
    int token = 'e', steps = 512;
    g->m.mixer_form = MIX_RECURRENT;
    bool one_region = cpu::forward_in_one_region(&g->m, 1, 1, &g->state);
    op_profile() = OpProfile();
    double t0 = now_seconds();
    for (int i = 0; i < steps; i++) {
        if (one_region) {
            #pragma omp parallel
            model_logits_pass(&timed, &g->m, &token, 1, 1, &g->state);
        } else {
            model_logits_pass(&timed, &g->m, &token, 1, 1, &g->state);
        }
    }
    double seconds = now_seconds() - t0;
    printf("  a decode step over timed ops: %.1f us (thread 0's time in each op)\n", seconds / steps * 1e6);
    print_op_profile(seconds, 0);
}

static int run_bench(const InferOptions *o) {
    std::vector<std::string> names;
    if (!o->preset.empty()) names.push_back(o->preset);
    else names = {"gla-small", "mamba2-small"};
    std::string why;
    if (o->device == "cuda" && !gpu::available(&why)) {
        printf("GPU generation benchmark skipped: %s\n", why.c_str());
        return 0;
    }
    printf("machine: %s\n", machine_line().c_str());
    for (const std::string &name : names) {
        Config c;
        if (!preset_config(name, &c)) die("--preset: unknown preset '%s'", name.c_str());
        double state_bytes = 0;
        for (int l = 0; l < c.n_layer; l++) state_bytes += 4.0 * layer_state_floats(&c, l);
        double bytes = 4.0 * matmul_weights(&c) + 2 * state_bytes;  // weights read, state read and written
        int threads = omp_get_max_threads();
        double f = forward_flops_per_token(&c, true);
        std::vector<double> dec, bw, bw1;
        reset_peak_rss();  // this model's own peak (at batch 1)
        Generator g;
        gen_open(&g, &c, cpu::random_params(&c, 1), o->device);
        double rss, pre = bench_generate(&g, 8, 256, o->device == "cpu" ? bytes : 0, &dec, &bw, &bw1, &rss);
        double tps = median(dec);
        printf("%-13s generate B 1 (%s): prefill %6.0f tok/s, generation %6.0f tok/s, %.1f MFLOP/token, %.1f GFLOP/s, "
               "peak RSS %.0f MB\n", name.c_str(), o->device.c_str(), pre, tps, f / 1e6, tps * f / 1e9, rss);
        if (!bw.empty())
            printf("%-13s   %.2f MB read per token; read bandwidth (same run) %.1f GB/s on %d threads, %.1f GB/s on 1 "
                   "-> bound %.0f tok/s; generation at %.0f%% of the %d-thread bound\n", name.c_str(), bytes / 1e6,
                   median(bw), threads, median(bw1), median(bw) * 1e9 / bytes, 100.0 * tps / (median(bw) * 1e9 / bytes),
                   threads);
        if (o->profile && o->device == "cpu") profile_decode(&g);
        gen_close(&g);
        Generator gb;
        gen_open(&gb, &c, cpu::random_params(&c, 1), o->device, 8);
        dec.clear();
        pre = bench_generate(&gb, 1, 256, 0, &dec, &bw, &bw1, &rss);
        gen_close(&gb);
        printf("%-13s generate B 8 (%s): prefill %6.0f tok/s, generation %6.0f tok/s (all rows)\n", name.c_str(),
               o->device.c_str(), pre, dec[0]);
    }
    if (o->device == "cpu")
        printf("  medians of 8 rounds of 256 decode steps at B 1, each round followed by two 0.05 s bandwidth timings"
               " (all threads, one thread)\n");
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
    read_model_or_die("--model", o->model, &c, &params);
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
    for (int L = o->passkey_min; L <= o->passkey_max; L *= 2) lengths.push_back(L);
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
// (gla, mamba2), kind and seed, FAMILY-KIND-sSEED.eval.tsv from --eval and
// FAMILY-KIND-sSEED.bin.stats from ./train. Two kinds are trained from
// scratch: base (a) and big state (b), the expanded-state architecture, the
// upper reference. The others are (a) post-trained: without expansion (lpt),
// or expanded by reinitialising (statex), by merging heads (merge, GLA) or by
// growing N with the old weights kept (grow, Mamba2). Any subset may be there.

static const int N_KINDS = 6;  // KINDS[0] is (a), KINDS[1] is (b), the rest are post-trained from (a)
static const char *KINDS[N_KINDS] = {"base", "big", "lpt", "statex", "merge", "grow"};
static const char *KIND_NAMES[N_KINDS] = {"base (a)", "big state (b)", "LPT", "StateX reinit", "StateX merge", "StateX grow"};

struct Measured {  // one metric over the seeds
    std::vector<double> v;
    std::vector<int> seed;  // v[i] is seed[i]'s
    double mean() const { double m = 0; for (double x : v) m += x; return v.empty() ? NAN : m / v.size(); }
    double sd() const {  // the sample sd; 0 for one seed
        double m = mean(), s = 0;
        for (double x : v) s += (x - m) * (x - m);
        return v.size() > 1 ? sqrt(s / (v.size() - 1)) : 0;
    }
    double of_seed(int s) const {
        for (size_t i = 0; i < v.size(); i++) if (seed[i] == s) return v[i];
        return NAN;
    }
    std::string cell(int digits) const {
        if (v.empty()) return "-";
        return v.size() > 1 ? strf("%.*f ± %.*f", digits, mean(), digits, sd()) : strf("%.*f", digits, mean());
    }
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

// One family's metrics: per kind, metric name -> values over the seeds;
// `order` keeps the names in the order first seen.
struct FamilyMetrics {
    std::map<std::string, Measured> m[N_KINDS];
    std::vector<int> seeds[N_KINDS];  // the runs found, per kind; none: the kind gets no column
    std::vector<std::string> order;
    void add(int k, int seed, const std::string &name, double v) {
        if (std::find(order.begin(), order.end(), name) == order.end()) order.push_back(name);
        m[k][name].v.push_back(v);
        m[k][name].seed.push_back(seed);
    }
};

static bool is_mqar(const std::string &name) { return name.rfind("MQAR", 0) == 0; }

static int metric_digits(const std::string &name) {
    if (name == "seeds" || name == "parameters" || name.find("state (") != std::string::npos ||
        name.find("memory") != std::string::npos) return 0;
    return name.find("bits") != std::string::npos ? 3 : 1;
}

// Reads every FAMILY-KIND-sSEED.eval.tsv (and .bin.stats) of one family;
// returns how many runs it found.
static int summarize_read(const std::string &dir, const char *fam, FamilyMetrics *fm) {
    int found = 0;
    for (int k = 0; k < N_KINDS; k++)
        for (int seed = 1; seed <= 100; seed++) {
            std::string base = strf("%s/%s-%s-s%d", dir.c_str(), fam, KINDS[k], seed);
            std::vector<std::vector<std::string>> rows;
            std::map<std::string, std::string> ev = read_tsv(base + ".eval.tsv", &rows);
            if (ev.empty()) continue;
            found++;
            fm->seeds[k].push_back(seed);
            std::map<std::string, std::string> st = read_tsv(base + ".bin.stats", nullptr);
            auto add = [&](const std::string &name, double v) { fm->add(k, seed, name, v); };
            add("seeds", 1);
            add("parameters", atof(ev["params"].c_str()));
            add("recurrent state (floats)", atof(ev["state_floats"].c_str()));
            if (st.count("wall_seconds")) add("training time of this stage (s)", atof(st["wall_seconds"].c_str()));
            if (st.count("peak_rss_mb")) add("peak memory (MB)", atof(st["peak_rss_mb"].c_str()));
            if (st.count("tokens")) add("training tokens of this stage (M)", atof(st["tokens"].c_str()) / 1e6);
            add("validation bits/byte", atof(ev["bpb"].c_str()));
            std::map<int, std::vector<double>> pk;
            for (auto &r : rows) {
                if (r.size() == 5 && r[0] == "mqar")
                    add(strf("MQAR n=%s%s", r[1].c_str(), r[2] == "0" ? "" : strf(", gap %s", r[2].c_str()).c_str()), 100 * atof(r[3].c_str()));
                if (r.size() == 5 && r[0] == "passkey") pk[atoi(r[1].c_str())].push_back(atof(r[3].c_str()));
            }
            for (auto &p : pk) {
                double a = 0;
                for (double x : p.second) a += x;
                add(strf("passkey %d bytes (mean of depths)", p.first), 100 * a / p.second.size());
            }
        }
    return found;
}

// A markdown table's header row and the rule under it.
static std::string md_header(const std::string &head) {
    std::string rule = "|";
    for (long i = 1; i < std::count(head.begin(), head.end(), '|'); i++) rule += "---|";
    return head + "\n" + rule + "\n";
}

// Header cells for the kinds found among kinds [from, N_KINDS).
static std::string kind_columns(const FamilyMetrics *fm, int from) {
    std::string cells;
    for (int k = from; k < N_KINDS; k++)
        if (!fm->seeds[k].empty()) cells += strf(" %s |", KIND_NAMES[k]);
    return cells;
}

// The family's main table: one row per metric, one column per kind (mean ± sd).
static std::string summarize_table(const char *fam, FamilyMetrics *fm) {
    std::string md = strf("\n## %s\n\n", fam[0] == 'g' ? "GLA" : "Mamba2") + md_header("| |" + kind_columns(fm, 0));
    for (const std::string &name : fm->order) {
        md += "| " + name + " |";
        for (int k = 0; k < N_KINDS; k++)
            if (!fm->seeds[k].empty())
                md += " " + (name == "seeds" ? strf("%zu", fm->m[k][name].v.size()) : fm->m[k][name].cell(metric_digits(name))) + " |";
        md += "\n";
    }
    return md;
}

// How much of the difference the bigger state makes, (b) − (a), each
// post-trained kind gets: (kind − a) / (b − a) of the means, per MQAR cell and
// for bits/byte. Only where that difference stands out of the seed noise.
static std::string summarize_gap_table(FamilyMetrics *fm) {
    if (fm->seeds[0].empty() || fm->seeds[1].empty()) return "";
    std::string md = "\n### share of the (b) − (a) gap closed\n\n" + md_header("| | (b) − (a) | 2 × max(sd a, sd b) |" + kind_columns(fm, 2));
    for (const std::string &name : fm->order) {
        if (name != "validation bits/byte" && !is_mqar(name)) continue;
        const Measured &a = fm->m[0][name], &b = fm->m[1][name];
        double gap = b.mean() - a.mean(), noise = 2 * std::max(a.sd(), b.sd());
        bool resolved = fabs(gap) >= noise && gap != 0;
        int digits = metric_digits(name);
        md += strf("| %s | %.*f | %.*f |", name.c_str(), digits, gap, digits, noise);
        for (int k = 2; k < N_KINDS; k++) {
            if (fm->seeds[k].empty()) continue;
            double share = (fm->m[k][name].mean() - a.mean()) / gap;
            md += resolved && std::isfinite(share) ? strf(" %.0f%% |", 100 * share) : " - |";
        }
        md += "\n";
    }
    return md + "\nA share is (kind − a) / (b − a) of the means: 0% is no better than (a), 100% as good as (b). "
                "\"-\": |(b) − (a)| is under 2 × the larger sd of (a) and (b), so the bigger state's effect in "
                "that cell is not resolved and a share would mean nothing (with one seed the sds are 0, so "
                "every nonzero difference counts as resolved).\n";
}

// The paper's comparison, seed by seed: each StateX arm minus LPT, both
// post-trained from the same base (a) of that seed. A difference that has one
// sign in every seed is the evidence the means alone do not give.
static std::string summarize_paired_table(FamilyMetrics *fm) {
    if (fm->seeds[2].empty()) return "";
    std::string md = "\n### StateX arms minus LPT, paired by seed\n\n" + md_header("| |" + kind_columns(fm, 3));
    for (const std::string &name : fm->order) {
        if (name != "validation bits/byte" && !is_mqar(name)) continue;
        md += "| " + name + " |";
        for (int k = 3; k < N_KINDS; k++) {
            if (fm->seeds[k].empty()) continue;
            Measured d;
            int above = 0;
            for (int s : fm->seeds[k]) {
                double x = fm->m[k][name].of_seed(s) - fm->m[2][name].of_seed(s);
                if (!std::isfinite(x)) continue;
                d.v.push_back(x);
                d.seed.push_back(s);
                above += x > 0;
            }
            md += strf(" %s (%d of %zu above) |", d.cell(metric_digits(name)).c_str(), above, d.v.size());
        }
        md += "\n";
    }
    return md + "\nMean ± sd over the seeds of (arm − LPT) on the same seed, and in how many seeds the arm is above "
                "LPT (for bits/byte, lower is better).\n";
}

// One row per run, bits/byte and MQAR: what the means and sds summarize.
static std::string summarize_seed_table(FamilyMetrics *fm) {
    std::vector<std::string> cols = {"validation bits/byte"};
    std::string head = "| kind | seed | bits/byte |";
    for (const std::string &name : fm->order)
        if (is_mqar(name)) { cols.push_back(name); head += " " + name + " |"; }
    std::string md = "\n### per seed (MQAR accuracy in %)\n\n" + md_header(head);
    for (int k = 0; k < N_KINDS; k++)
        for (int s : fm->seeds[k]) {
            md += strf("| %s | %d |", KIND_NAMES[k], s);
            for (const std::string &c : cols) {
                double x = fm->m[k][c].of_seed(s);
                md += std::isfinite(x) ? strf(" %.*f |", metric_digits(c), x) : " - |";
            }
            md += "\n";
        }
    return md;
}

// The family's charts, one line per kind with error bars of ± 1 sd over the
// seeds: MQAR against n without a gap and with one, passkey against length.
// Returns their markdown.
static std::string summarize_charts(const std::string &dir, const char *fam, FamilyMetrics *fm) {
    static const uint32_t colors[N_KINDS] = {0x7F7F7F, 0x9467BD, 0x1F77B4, 0xD62728, 0x2CA02C, 0xFF7F0E};
    std::vector<Series> mq, mq_gap, pk;
    std::string gap;  // the gap the evaluation used, for the title
    auto point = [](Series *s, double x, const Measured &m) { s->x.push_back(x); s->y.push_back(m.mean()); s->err.push_back(m.sd()); };
    for (int k = 0; k < N_KINDS; k++) {
        if (fm->seeds[k].empty()) continue;
        Series a{KIND_NAMES[k], {}, {}, colors[k]}, g = a, p = a;
        for (int n : MQAR_N) {
            auto it = fm->m[k].find(strf("MQAR n=%d", n));
            if (it != fm->m[k].end()) point(&a, n, it->second);
            for (auto &[name, x] : fm->m[k])  // whatever gap the evaluation used
                if (name.rfind(strf("MQAR n=%d, gap ", n), 0) == 0) { point(&g, n, x); gap = name.substr(name.rfind(' ') + 1); break; }
        }
        int L;
        for (const std::string &name : fm->order)  // the lengths evaluated, in order
            if (sscanf(name.c_str(), "passkey %d bytes", &L) == 1 && fm->m[k].count(name)) point(&p, L, fm->m[k][name]);
        mq.push_back(a);
        mq_gap.push_back(g);
        pk.push_back(p);
    }
    std::string title = fam[0] == 'g' ? "GLA" : "MAMBA2", path = dir + "/" + fam;
    std::string e = write_line_chart(path + "_mqar.png", title + ": MQAR ACCURACY", "PAIRS N", "%", mq, true, 0, 100);
    if (e.empty()) e = write_line_chart(path + "_mqar_gap.png", title + ": MQAR ACCURACY, GAP " + gap, "PAIRS N", "%", mq_gap, true, 0, 100);
    if (e.empty()) e = write_line_chart(path + "_passkey.png", title + ": PASSKEY ACCURACY", "CONTEXT BYTES", "%", pk, true, 0, 100);
    if (!e.empty()) die("%s", e.c_str());
    return strf("\n![%s MQAR](%s_mqar.png) ![%s MQAR with a gap](%s_mqar_gap.png) ![%s passkey](%s_passkey.png)\n",
                title.c_str(), fam, title.c_str(), fam, title.c_str(), fam);
}

static int run_summarize(const InferOptions *o) {
    std::string md = "# StateX experiment: results\n\nEach cell is the mean ± standard deviation over the seeds "
                     "(sample sd; the number of seeds is in the first table). Accuracies in %. (a): the base "
                     "architecture from scratch; (b): the expanded-state architecture from scratch, the upper "
                     "reference; the other columns are (a) post-trained.\n";
    int found = 0;
    for (const char *fam : {"gla", "mamba2"}) {
        FamilyMetrics fm;
        int n = summarize_read(o->summarize, fam, &fm);
        if (n == 0) continue;
        found += n;
        md += summarize_table(fam, &fm);
        md += summarize_gap_table(&fm);
        md += summarize_paired_table(&fm);
        md += summarize_seed_table(&fm);
        md += summarize_charts(o->summarize, fam, &fm);
    }
    if (!found) die("--summarize: no FAMILY-KIND-sSEED.eval.tsv files in %s", o->summarize.c_str());
    std::string path = o->summarize + "/results.md";
    std::string e = write_file_atomic(path, {{md.data(), md.size()}});
    if (!e.empty()) die("%s", e.c_str());
    printf("%s", md.c_str());
    printf("\nwrote %s and the charts beside it\n", path.c_str());
    return 0;
}
