// model.h: what every part of statex shares.
//
//   1. Config: the two model families (GLA, Mamba2) and their sizes.
//   2. The parameter layout: one flat float buffer, a struct of pointers into it,
//      and a table (name, offset, shape) that fixes the model-file order.
//   3. The activation layout for a batch of B sequences of T tokens, same idea.
//   4. Model files and debug-state files (formats in README.md).
//   5. Small helpers: errors, a seeded RNG, a vectorisable exp, timing.
//   6. The model API of each backend: cpu:: (statex_cpu.cpp), gpu:: (statex.cu).
//   7. The op table: every op, declared once, in the order the tutorial reads.
//   8. The model passes (forward, backward, update), written once over the table.
//   9. The model API on the model's own device (dev::), for the tools.
//
// Everything here is plain structs and functions, in the style of llm.c.
#pragma once
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>
#include <chrono>
#include <unistd.h>
#include <fcntl.h>
#include <sys/stat.h>

// ----------------------------------------------------------------------------
// 5. helpers first, since everything below uses them

// What the tool is reading while die() may be called, e.g. "X.opt: stored
// flags: ", so an error names where the bad value came from. Usually empty.
inline std::string &die_context() {
    static std::string s;
    return s;
}

// Print "error: ..." to stderr and exit(1). For the command-line tools.
[[noreturn]] inline void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "error: %s", die_context().c_str());
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

// printf into a std::string: how readers report what is wrong with a file.
inline std::string strf(const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

inline void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) die("out of memory allocating %zu bytes", bytes);
    return p;
}
// Every float buffer starts on a 64-byte boundary and is zeroed. The alignment
// is not only for speed: vectorised loops (ours and Eigen's) peel a different
// number of leading elements depending on a pointer's alignment, which changes
// the order of a sum's additions. With fixed alignment, results depend on the
// data alone and not on where malloc happened to put a buffer, which is what
// makes `--resume` bit-exact.
inline float *xcalloc_floats(size_t n) {
    size_t bytes = ((n ? n : 1) * sizeof(float) + 63) & ~(size_t)63;
    float *p = (float *)aligned_alloc(64, bytes);
    if (!p) die("out of memory allocating %zu floats", n);
    memset(p, 0, bytes);
    return p;
}

inline double now_seconds() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

// A small seeded RNG (splitmix64), so that a seed gives the same model and the
// same batches on every machine; std:: distributions differ between libraries.
struct Rng { uint64_t s; };
inline uint64_t rng_u64(Rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
inline float rng_uniform(Rng *r) { return (float)((rng_u64(r) >> 40) * (1.0 / 16777216.0)); }  // [0,1)
inline int rng_int(Rng *r, int n) { return (int)(rng_u64(r) % (uint64_t)n); }              // [0,n)
inline float rng_normal(Rng *r) {  // Box-Muller
    double u1 = ((rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740993.0);
    double u2 = (rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// exp(x) in a form the compiler can vectorise. glibc's expf only vectorises
// under -ffast-math, which would also break our NaN checks, so the hot loops
// (gates, SiLU, chunk decays) use this: Cody-Waite reduction x = n ln2 + g,
// |g| <= ln2/2, then a degree-7 Taylor series; relative error below 1e-7.
// A NaN goes through as NaN (the clamp keeps it, g carries it to the result);
// n is taken from 0 instead, since converting NaN to int is undefined.
// always_inline: in a long function (the SSD passes) g++ would otherwise call
// it, and a loop with a call in it does not vectorise.
__attribute__((always_inline)) inline float exp_fast(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = std::rint((x == x ? x : 0.0f) * 1.44269504088896341f);
    float g = std::fma(n, -0.693145751953125f, x);        // ln2 split in a high part
    g = std::fma(n, -1.428606765330187045e-06f, g);       // and a low part
    float p = 1.0f / 5040;
    p = std::fma(p, g, 1.0f / 720);
    p = std::fma(p, g, 1.0f / 120);
    p = std::fma(p, g, 1.0f / 24);
    p = std::fma(p, g, 1.0f / 6);
    p = std::fma(p, g, 0.5f);
    p = std::fma(p, g, 1.0f);
    p = std::fma(p, g, 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;              // 2^n as a float
    float scale;
    memcpy(&scale, &bits, 4);
    return p * scale;
}
inline float sigmoidf_(float x) { return 1.0f / (1.0f + exp_fast(-x)); }
inline float softplusf(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

// ----------------------------------------------------------------------------
// 1. config

enum { FAMILY_GLA = 1, FAMILY_MAMBA2 = 2 };
#define MODEL_MAGIC 20250926
#define STATE_MAGIC 20250927
#define MAX_LAYER 128
#define RMS_EPS 1e-5f

struct Config {
    int family;          // FAMILY_GLA or FAMILY_MAMBA2
    int vocab_size;      // 256: bytes
    int d_model;         // D
    int n_layer;         // L
    int tied;            // lm head = embedding matrix
    // GLA
    int key_dim;         // K
    int value_dim;       // V
    int gate_rank;       // r, rank of the forget-gate projection
    int mlp_hidden;      // F
    // Mamba2
    int d_inner;         // E
    int headdim;         // P
    int d_conv;          // causal conv width
    // per layer: GLA head count H_l, or Mamba2 state size N_l
    int n_head[MAX_LAYER];
    int d_state[MAX_LAYER];
};

inline const char *family_name(int f) { return f == FAMILY_GLA ? "GLA" : f == FAMILY_MAMBA2 ? "Mamba2" : "?"; }
inline int m2_nheads(const Config *c) { return c->d_inner / c->headdim; }
inline int m2_conv_dim(const Config *c, int l) { return c->d_inner + 2 * c->d_state[l]; }            // x, B, C
inline int m2_in_dim(const Config *c, int l) { return 2 * c->d_inner + 2 * c->d_state[l] + m2_nheads(c); }  // z, xBC, dt

// Recurrent state of layer l, in floats (README "The math": GLA K*V/H; Mamba2 SSM + conv).
inline size_t layer_state_floats(const Config *c, int l) {
    if (c->family == FAMILY_GLA) return (size_t)c->key_dim * c->value_dim / c->n_head[l];
    return (size_t)c->d_inner * c->d_state[l] + (size_t)(c->d_conv - 1) * m2_conv_dim(c, l);
}

// Sanity of every size; "" when fine, else what is wrong. Limits keep every
// offset inside size_t and every index inside int.
inline std::string config_problem(const Config *c) {
    auto bad = [](int v, int lo, int hi) { return v < lo || v > hi; };
    if (c->family != FAMILY_GLA && c->family != FAMILY_MAMBA2) return strf("unknown model family %d (1 = GLA, 2 = Mamba2)", c->family);
    // tokens are bytes: every id 0..255 must have an embedding row (ids are not checked again)
    if (bad(c->vocab_size, 256, 1 << 20)) return strf("vocab_size %d out of range 256..%d (tokens are bytes)", c->vocab_size, 1 << 20);
    if (bad(c->d_model, 1, 1 << 16)) return strf("d_model %d out of range", c->d_model);
    if (bad(c->n_layer, 1, MAX_LAYER)) return strf("n_layer %d out of range 1..%d", c->n_layer, MAX_LAYER);
    if (bad(c->tied, 0, 1)) return strf("tied flag %d is not 0 or 1", c->tied);
    if (c->family == FAMILY_GLA) {
        if (bad(c->key_dim, 1, 1 << 16) || bad(c->value_dim, 1, 1 << 16)) return strf("key_dim %d / value_dim %d out of range", c->key_dim, c->value_dim);
        if (bad(c->gate_rank, 1, 1 << 16)) return strf("gate_rank %d out of range", c->gate_rank);
        if (bad(c->mlp_hidden, 1, 1 << 18)) return strf("mlp_hidden %d out of range", c->mlp_hidden);
        for (int l = 0; l < c->n_layer; l++) {
            int H = c->n_head[l];
            if (H < 1 || c->key_dim % H || c->value_dim % H)
                return strf("layer %d: head count %d must be >= 1 and divide key_dim %d and value_dim %d", l, H, c->key_dim, c->value_dim);
        }
    } else {
        if (bad(c->d_inner, 1, 1 << 18) || bad(c->headdim, 1, 1 << 16) || c->d_inner % c->headdim)
            return strf("d_inner %d must be a positive multiple of headdim %d", c->d_inner, c->headdim);
        if (bad(c->d_conv, 1, 64)) return strf("d_conv %d out of range 1..64", c->d_conv);
        for (int l = 0; l < c->n_layer; l++)
            if (bad(c->d_state[l], 1, 1 << 14)) return strf("layer %d: state size %d out of range", l, c->d_state[l]);
    }
    return "";
}

// ----------------------------------------------------------------------------
// 2. parameters: one flat buffer, pointers into it, and the file order

struct LayerWeights {
    // GLA: token mixing (attn) then SwiGLU MLP
    float *attn_norm, *q_proj, *k_proj, *v_proj, *g_proj, *gk_proj0, *gk_proj1, *gk_bias, *g_norm, *o_proj;
    float *mlp_norm, *gate_proj, *up_proj, *down_proj;
    // Mamba2: the mixer is the whole block
    float *norm, *in_proj, *conv_w, *conv_b, *dt_bias, *A_log, *D, *gnorm, *out_proj;
};
struct Weights {
    float *embed;                 // [vocab, D]
    LayerWeights layer[MAX_LAYER];
    float *norm_w;                // [D]
    float *lm_head;               // [vocab, D]; == embed when tied
};

// One named tensor of the flat buffer. Its place in this table is its place in
// the model file.
struct ParamTensor {
    std::string name;   // e.g. "layers.3.attn.q_proj.weight"
    size_t offset;      // in floats, into the flat buffer
    int rows, cols;     // a vector has rows = 1
    int layer;          // -1 for embedding, final norm and lm head
    bool is_matrix;     // gets weight decay (projections and embeddings)
    bool is_mixer;      // belongs to a layer's token mixing (what StateX expands)
    size_t size() const { return (size_t)rows * cols; }
};

// The single source of truth for the parameter order (README, "File formats").
// Returns the table; when `base` is given, also points `w` into it.
inline std::vector<ParamTensor> param_layout(const Config *c, float *base = nullptr, Weights *w = nullptr) {
    std::vector<ParamTensor> t;
    size_t off = 0;
    auto add = [&](const std::string &name, int rows, int cols, float **slot, int layer, bool matrix, bool mixer) {
        t.push_back({name, off, rows, cols, layer, matrix, mixer});
        if (base && slot) *slot = base + off;
        off += (size_t)rows * cols;
    };
    Weights dummy;
    if (!w) w = &dummy;
    int D = c->d_model;
    add("embed.weight", c->vocab_size, D, &w->embed, -1, true, false);
    for (int l = 0; l < c->n_layer; l++) {
        LayerWeights *L = &w->layer[l];
        std::string p = "layers." + std::to_string(l) + ".";
        if (c->family == FAMILY_GLA) {
            int K = c->key_dim, V = c->value_dim, r = c->gate_rank, F = c->mlp_hidden, dv = V / c->n_head[l];
            add(p + "attn_norm.weight", 1, D, &L->attn_norm, l, false, true);
            add(p + "attn.q_proj.weight", K, D, &L->q_proj, l, true, true);
            add(p + "attn.k_proj.weight", K, D, &L->k_proj, l, true, true);
            add(p + "attn.v_proj.weight", V, D, &L->v_proj, l, true, true);
            add(p + "attn.g_proj.weight", V, D, &L->g_proj, l, true, true);
            add(p + "attn.gk_proj0.weight", r, D, &L->gk_proj0, l, true, true);
            add(p + "attn.gk_proj1.weight", K, r, &L->gk_proj1, l, true, true);
            add(p + "attn.gk_proj1.bias", 1, K, &L->gk_bias, l, false, true);
            add(p + "attn.g_norm.weight", 1, dv, &L->g_norm, l, false, true);
            add(p + "attn.o_proj.weight", D, V, &L->o_proj, l, true, true);
            add(p + "mlp_norm.weight", 1, D, &L->mlp_norm, l, false, false);
            add(p + "mlp.gate_proj.weight", F, D, &L->gate_proj, l, true, false);
            add(p + "mlp.up_proj.weight", F, D, &L->up_proj, l, true, false);
            add(p + "mlp.down_proj.weight", D, F, &L->down_proj, l, true, false);
        } else {
            int E = c->d_inner, nh = m2_nheads(c);
            add(p + "norm.weight", 1, D, &L->norm, l, false, true);
            add(p + "mixer.in_proj.weight", m2_in_dim(c, l), D, &L->in_proj, l, true, true);
            add(p + "mixer.conv1d.weight", m2_conv_dim(c, l), c->d_conv, &L->conv_w, l, false, true);
            add(p + "mixer.conv1d.bias", 1, m2_conv_dim(c, l), &L->conv_b, l, false, true);
            add(p + "mixer.dt_bias", 1, nh, &L->dt_bias, l, false, true);
            add(p + "mixer.A_log", 1, nh, &L->A_log, l, false, true);
            add(p + "mixer.D", 1, nh, &L->D, l, false, true);
            add(p + "mixer.norm.weight", 1, E, &L->gnorm, l, false, true);
            add(p + "mixer.out_proj.weight", D, E, &L->out_proj, l, true, true);
        }
    }
    add("norm.weight", 1, D, &w->norm_w, -1, false, false);
    if (!c->tied) add("lm_head.weight", c->vocab_size, D, &w->lm_head, -1, true, false);
    else if (base) w->lm_head = w->embed;
    return t;
}
inline size_t num_params_of(const Config *c) {
    std::vector<ParamTensor> t = param_layout(c);
    return t.back().offset + t.back().size();
}

// ----------------------------------------------------------------------------
// 3. activations for B sequences of T tokens (rows = B*T, token-major)

// Chunk lengths of the chunked (parallel) forms. Any T works; the last chunk
// may be short. GLA decays per key channel, so its intra-chunk scores need one
// exp per (t, s, channel): short chunks keep that cheap. Mamba2 decays per head,
// so longer chunks pay off, as long as the state is not small: per token, the
// chunk's quadratic part costs about CL (N + nh P) multiply-adds and its
// state terms 2 nh P N whatever CL is, so with a small N the quadratic part
// dominates and a shorter chunk cuts it (for more chunk states to pass on).
// SSD_CHUNK is the longest (the work spaces are sized by it); ssd_chunk_len
// picks a layer's.
// The main job's layers (N 16, P 48) trained 8-10% faster a step with chunks
// of 32 than of 64 (and of 16: no faster than 64); at N 32 the two were even,
// at N 64 (mamba2-small) 32 was 1-4% slower (Zen 4, 2 threads, alternating runs).
#define GLA_CHUNK 16
#define SSD_CHUNK 64
inline int ssd_chunk_len(int N) { return N <= 16 ? SSD_CHUNK / 2 : SSD_CHUNK; }
inline int n_chunks(int T, int C) { return (T + C - 1) / C; }

// GLA keeps the state entering only every GLA_STATE_EVERY-th chunk (every 64
// tokens) for the backward pass, which recomputes the ones between: a state is
// K*V/H floats, so one per 16 tokens would be most of the training memory.
#define GLA_STATE_EVERY 4
// The kept GLA states of one (sequence, head): slot g holds the state entering
// chunk g * GLA_STATE_EVERY (slot 0 the initial state), the last slot the final state.
inline int gla_state_slots(int T) { return n_chunks(T, GLA_CHUNK * GLA_STATE_EVERY) + 1; }

// The token-mixing layers can run in either of two forms with the same math.
enum { MIX_CHUNKED = 0, MIX_RECURRENT = 1 };

struct LayerActs {
    float *res;                         // [BT, D] residual stream entering the layer
    // GLA
    float *attn_rstd, *attn_in;         // [BT], [BT, D]  rmsnorm(res) * attn_norm
    float *q, *k, *v, *og;              // [BT, K], [BT, K], [BT, V], [BT, V]
    float *gk_low, *gk_pre, *gate;      // [BT, r], [BT, K] (W1 W0 u + b), [BT, K] log forget gate a
    float *o, *o_rstd, *o_out;          // [BT, V] raw head outputs, [BT, H], [BT, V] normed and gated
    float *S;                           // [B, H, gla_state_slots(T), dk, dv] kept chunk states (+ final)
    float *S_all;                       // [B, H, T, dk, dv] state after every step (recurrent form only)
    float *res_mid;                     // [BT, D] after the token mixing
    float *mlp_rstd, *mlp_in;           // [BT], [BT, D]
    float *mlp_gate, *mlp_up, *mlp_h;   // [BT, F] each; h = silu(gate) * up
    // Mamba2
    float *norm_rstd, *norm_out;        // [BT], [BT, D]
    float *zxbcdt;                      // [BT, 2E + 2N + nh] in_proj output
    float *conv_pre, *xbc;              // [BT, E + 2N] conv output before / after SiLU
    float *dt;                          // [BT, nh] softplus(dt_raw + dt_bias)
    float *y;                           // [BT, E] SSD output incl. D skip
    float *y_rstd, *y_out;              // [BT], [BT, E] gated rmsnorm output
    float *h;                           // [B, nh, nchunk+1, P, N] state entering each chunk (+ final)
    float *h_all;                       // [B, nh, T, P, N] (recurrent form only)
};
struct Acts {
    LayerActs layer[MAX_LAYER];
    float *res_final;                   // [BT, D] residual after the last layer
    float *final_rstd, *final_out;      // [BT], [BT, D]
    float *logits;                      // [BT, vocab]
    float *losses;                      // [BT] per-position cross-entropy (0 where ignored)
    // backward scratch, shared by all layers (sized for the largest layer)
    float *dres;                        // [BT, D] gradient of the residual stream
    float *drows[9];                    // [BT, widest] each; the backward passes name their uses
    float *dlogits;                     // [BT, vocab]
    float *scratch;                     // work space of the scans: one slice per parallel task
    size_t scratch_per_task;            // floats per slice (CPU: per OpenMP thread; GPU: per block)
};

// Lays the activations out in one buffer (two passes: sizes, then pointers).
// Returns the total size in floats. keep_steps: also room for the per-step
// states of the recurrent form (tests only; grows with T*state).
inline size_t acts_layout(const Config *c, int B, int T, int n_tasks, size_t scratch_per_task, bool keep_steps,
                          float *base, Acts *a) {
    size_t off = 0;
    auto take = [&](float **slot, size_t n) {
        if (base) *slot = base + off;
        off += (n + 15) & ~(size_t)15;   // keep every buffer 64-byte aligned
    };
    Acts dummy;
    if (!a) a = &dummy;
    size_t BT = (size_t)B * T, D = c->d_model;
    size_t widest = 0;  // widest per-token row any layer needs in backward scratch
    for (int l = 0; l < c->n_layer; l++) {
        LayerActs *L = &a->layer[l];
        take(&L->res, BT * D);
        if (c->family == FAMILY_GLA) {
            size_t K = c->key_dim, V = c->value_dim, r = c->gate_rank, F = c->mlp_hidden, H = c->n_head[l];
            size_t states = K * V / H;
            take(&L->attn_rstd, BT); take(&L->attn_in, BT * D);
            take(&L->q, BT * K); take(&L->k, BT * K); take(&L->v, BT * V); take(&L->og, BT * V);
            take(&L->gk_low, BT * r); take(&L->gk_pre, BT * K); take(&L->gate, BT * K);
            take(&L->o, BT * V); take(&L->o_rstd, BT * H); take(&L->o_out, BT * V);
            take(&L->S, (size_t)B * gla_state_slots(T) * states);
            if (keep_steps) take(&L->S_all, BT * states); else L->S_all = nullptr;
            take(&L->res_mid, BT * D);
            take(&L->mlp_rstd, BT); take(&L->mlp_in, BT * D);
            take(&L->mlp_gate, BT * F); take(&L->mlp_up, BT * F); take(&L->mlp_h, BT * F);
            size_t w = std::max(std::max(std::max(K, V), std::max(F, D)), r);  // every row gradient of the layer
            widest = std::max(widest, w);
        } else {
            size_t E = c->d_inner, N = c->d_state[l], nh = m2_nheads(c), P = c->headdim;
            size_t states = nh * P * N;
            take(&L->norm_rstd, BT); take(&L->norm_out, BT * D);
            take(&L->zxbcdt, BT * m2_in_dim(c, l));
            take(&L->conv_pre, BT * m2_conv_dim(c, l)); take(&L->xbc, BT * m2_conv_dim(c, l));
            take(&L->dt, BT * nh); take(&L->y, BT * E);
            take(&L->y_rstd, BT); take(&L->y_out, BT * E);
            take(&L->h, (size_t)B * (n_chunks(T, ssd_chunk_len(N)) + 1) * states);
            if (keep_steps) take(&L->h_all, BT * states); else L->h_all = nullptr;
            size_t w = std::max((size_t)m2_in_dim(c, l), D);
            widest = std::max(widest, w);
        }
    }
    take(&a->res_final, BT * D);
    take(&a->final_rstd, BT); take(&a->final_out, BT * D);
    take(&a->logits, BT * c->vocab_size); take(&a->losses, BT);
    // backward scratch: residual gradient, then nine row buffers of the widest width
    take(&a->dres, BT * D);
    for (int i = 0; i < 9; i++) take(&a->drows[i], BT * widest);
    take(&a->dlogits, BT * c->vocab_size);
    // the scans' work space: n_tasks slices, each as large as the backend asks
    // (cpu:: and gpu::scan_work_floats), rounded up to keep every slice aligned
    a->scratch_per_task = (scratch_per_task + 15) & ~(size_t)15;
    take(&a->scratch, a->scratch_per_task * n_tasks);
    return off;
}

// Model FLOPs per token of one forward pass (a multiply-add is 2 FLOPs): the
// matmuls (2 x their weights) plus the token mixers in the form used.
//   GLA layer, chunked:   H ((C+1)(dk+dv) + 4 dk dv)    C = GLA_CHUNK
//   Mamba2 layer, chunked: (C+1) N + nh ((C+1) P + 4 P N)   C = ssd_chunk_len(N)
//   recurrent (one token): GLA 4 H dk dv, Mamba2 4 nh P N
// A training step costs 3x the forward (the usual 6N rule for the matmuls).
inline double matmul_weights(const Config *c) {
    double D = c->d_model, w = (double)c->vocab_size * D;  // the lm head
    for (int l = 0; l < c->n_layer; l++) {
        if (c->family == FAMILY_GLA)
            w += D * (2.0 * c->key_dim + 2.0 * c->value_dim + c->gate_rank) + (double)c->key_dim * c->gate_rank +
                 (double)c->value_dim * D + 3.0 * c->mlp_hidden * D;
        else
            w += D * m2_in_dim(c, l) + (double)c->d_inner * D + (double)m2_conv_dim(c, l) * c->d_conv;
    }
    return w;
}
inline double forward_flops_per_token(const Config *c, bool recurrent) {
    double f = 2.0 * matmul_weights(c);
    for (int l = 0; l < c->n_layer; l++) {
        if (c->family == FAMILY_GLA) {
            double H = c->n_head[l], dk = c->key_dim / H, dv = c->value_dim / H, C = GLA_CHUNK;
            f += recurrent ? 4 * H * dk * dv : H * ((C + 1) * (dk + dv) + 4 * dk * dv);
        } else {
            double N = c->d_state[l], P = c->headdim, nh = m2_nheads(c), C = ssd_chunk_len(N);
            f += recurrent ? 4 * nh * P * N : (C + 1) * N + nh * ((C + 1) * P + 4 * P * N);
        }
    }
    return f;
}

// The named model presets. The benchmark presets' sizes are fixed so figures
// compare across tools; tiny-mamba2 is the main job's model (make train).
inline bool preset_config(const std::string &name, Config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 256;
    c->tied = 1;
    auto gla = [&](int D, int L, int K, int V, int r, int F, int H) {
        c->family = FAMILY_GLA; c->d_model = D; c->n_layer = L; c->key_dim = K; c->value_dim = V;
        c->gate_rank = r; c->mlp_hidden = F;
        for (int l = 0; l < L; l++) c->n_head[l] = H;
    };
    auto mamba2 = [&](int D, int L, int E, int P, int N, int W) {
        c->family = FAMILY_MAMBA2; c->d_model = D; c->n_layer = L; c->d_inner = E; c->headdim = P; c->d_conv = W;
        for (int l = 0; l < L; l++) c->d_state[l] = N;
    };
    if (name == "tiny-gla") gla(192, 4, 96, 192, 16, 512, 2);
    else if (name == "tiny-mamba2") mamba2(192, 6, 384, 48, 32, 4);
    else if (name == "gla-small") gla(256, 6, 128, 256, 16, 768, 4);
    else if (name == "mamba2-small") mamba2(256, 6, 512, 64, 64, 4);
    else if (name == "gla-1.3b") gla(2048, 24, 1024, 2048, 16, 5632, 4);
    else if (name == "mamba2-1.3b") mamba2(2048, 48, 4096, 64, 128, 4);
    else if (name == "exp-gla") gla(64, 2, 32, 64, 8, 128, 4);       // the experiment's base models (a)
    else if (name == "exp-mamba2") mamba2(64, 2, 128, 16, 4, 4);
    else return false;
    return true;
}

// Flag values: a clear error, naming the flag, for anything that is not a number.
inline int to_int(const std::string &flag, const std::string &v) {
    char *end;
    long x = strtol(v.c_str(), &end, 10);
    if (v.empty() || *end || x < -(1L << 30) || x > (1L << 30)) die("%s: '%s' is not an integer", flag.c_str(), v.c_str());
    return (int)x;
}
inline float to_float(const std::string &flag, const std::string &v) {
    char *end;
    float x = strtof(v.c_str(), &end);
    if (v.empty() || *end || !std::isfinite(x)) die("%s: '%s' is not a number", flag.c_str(), v.c_str());
    return x;
}

// ----------------------------------------------------------------------------
// 4. files

// Writes `bytes` to `path` atomically: a temporary file beside it, flushed and
// synced, then renamed over the target; so a crash or a full disk never leaves
// a half-written file under the real name. "" on success, else the reason.
// A kill -9 can still leave PATH.tmp behind: ./train removes its own at start.
inline std::string write_file_atomic(const std::string &path, const std::vector<std::pair<const void *, size_t>> &parts) {
    std::string tmp = path + ".tmp";
    FILE *f = fopen(tmp.c_str(), "wb");
    if (!f) return strf("cannot open %s for writing: %s", tmp.c_str(), strerror(errno));
    bool ok = true;
    for (auto &p : parts) ok = ok && (p.second == 0 || fwrite(p.first, 1, p.second, f) == p.second);  // an empty part may be NULL
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    if (fclose(f) != 0 && ok) { ok = false; err = errno; }
    if (!ok) { remove(tmp.c_str()); return strf("writing %s failed: %s", path.c_str(), strerror(err)); }
    if (rename(tmp.c_str(), path.c_str()) != 0) {
        err = errno;
        remove(tmp.c_str());
        return strf("cannot rename %s to %s: %s", tmp.c_str(), path.c_str(), strerror(err));
    }
    return "";
}

// Syncs the directory holding `path`, so renames in it are on disk in the
// order they were made (the checkpoint pair relies on that order).
inline void sync_dir_of(const std::string &path) {
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) { fsync(fd); close(fd); }
}

// Text files (corpora, prompts) larger than this are refused: a mistake, not data.
#define MAX_TEXT_BYTES ((size_t)1 << 32)

// Opens a regular file for reading and gives its size. Devices, pipes and
// directories are refused before a byte is read: /dev/zero never ends, and
// O_NONBLOCK keeps the open of a pipe from waiting for a writer.
inline std::string open_regular(const std::string &path, FILE **f, size_t *size) {
    int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return strf("cannot open %s: %s", path.c_str(), strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return strf("%s: not a regular file", path.c_str());
    }
    *f = fdopen(fd, "rb");
    if (!*f) { close(fd); return strf("cannot open %s: %s", path.c_str(), strerror(errno)); }
    *size = (size_t)st.st_size;
    return "";
}
// Reads exactly n bytes, else says why.
inline std::string read_exact(FILE *f, const std::string &path, void *dst, size_t n) {
    if (n && fread(dst, 1, n, f) != n) return strf("%s: %s", path.c_str(), ferror(f) ? "read error" : "truncated while being read");
    return "";
}

// Reads a whole regular file of at most max_bytes. "" on success, else the reason.
inline std::string read_file(const std::string &path, std::vector<char> *out, size_t max_bytes = MAX_TEXT_BYTES) {
    FILE *f = nullptr;
    size_t size = 0;
    std::string e = open_regular(path, &f, &size);
    if (!e.empty()) return e;
    if (size > max_bytes) {
        fclose(f);
        return strf("%s: %zu bytes, more than the %zu this file may have", path.c_str(), size, max_bytes);
    }
    out->resize(size);
    e = read_exact(f, path, out->data(), size);
    fclose(f);
    return e;
}

// Model file, version 1: int32 header[256], then the parameters as float32 in
// param_layout order. See README.md "File formats".
inline void config_to_header(const Config *c, int32_t h[256]) {
    memset(h, 0, 256 * sizeof(int32_t));
    h[0] = MODEL_MAGIC; h[1] = 1; h[2] = c->family;
    h[3] = c->vocab_size; h[4] = c->d_model; h[5] = c->n_layer; h[6] = c->tied;
    if (c->family == FAMILY_GLA) {
        h[7] = c->key_dim; h[8] = c->value_dim; h[9] = c->gate_rank; h[10] = c->mlp_hidden;
        for (int l = 0; l < c->n_layer; l++) h[64 + l] = c->n_head[l];
    } else {
        h[7] = c->d_inner; h[8] = c->headdim; h[9] = c->d_conv; h[10] = 0;
        for (int l = 0; l < c->n_layer; l++) h[64 + l] = c->d_state[l];
    }
}

inline std::string header_to_config(const int32_t h[256], Config *c) {
    if (h[0] != MODEL_MAGIC) return strf("bad magic %d (expected %d): not a statex model file", h[0], MODEL_MAGIC);
    if (h[1] != 1) return strf("unsupported version %d (expected 1)", h[1]);
    memset(c, 0, sizeof *c);
    c->family = h[2]; c->vocab_size = h[3]; c->d_model = h[4]; c->n_layer = h[5]; c->tied = h[6];
    if (c->family == FAMILY_GLA) {
        c->key_dim = h[7]; c->value_dim = h[8]; c->gate_rank = h[9]; c->mlp_hidden = h[10];
    } else {
        c->d_inner = h[7]; c->headdim = h[8]; c->d_conv = h[9];
        if (c->family == FAMILY_MAMBA2 && h[10] != 0) return strf("header entry 10 is %d, must be 0 for Mamba2", h[10]);
    }
    if (c->n_layer < 1 || c->n_layer > MAX_LAYER) return strf("n_layer %d out of range 1..%d", c->n_layer, MAX_LAYER);
    for (int i = 11; i < 64; i++) if (h[i] != 0) return strf("header entry %d is %d, must be 0", i, h[i]);
    for (int i = 64 + c->n_layer; i < 256; i++) if (h[i] != 0) return strf("header entry %d is %d, must be 0", i, h[i]);
    for (int l = 0; l < c->n_layer; l++) (c->family == FAMILY_GLA ? c->n_head : c->d_state)[l] = h[64 + l];
    return config_problem(c);
}

// Opens a file that starts with a 256-int32 header (model files and debug
// states) and reads the header; the caller checks the size the header implies
// against *size before it allocates or reads anything more. "" on success.
inline std::string open_with_header(const std::string &path, FILE **f, size_t *size, int32_t h[256]) {
    std::string e = open_regular(path, f, size);
    if (!e.empty()) return e;
    if (*size < 1024) e = strf("%s: truncated: %zu bytes, shorter than the 1024-byte header", path.c_str(), *size);
    if (e.empty()) e = read_exact(*f, path, h, 1024);
    if (!e.empty()) fclose(*f);
    return e;
}

// The first NaN or Inf among the parameters, naming its tensor; "" when all are
// finite. Such a file would otherwise show up later as a NaN loss or NUL output.
inline std::string nonfinite_problem(const Config *c, const float *p) {
    size_t n = num_params_of(c), i = 0;
    while (i < n && std::isfinite(p[i])) i++;
    if (i == n) return "";
    for (const ParamTensor &t : param_layout(c))
        if (i >= t.offset && i < t.offset + t.size())
            return strf("tensor %s holds %s (element %zu): not a usable model", t.name.c_str(),
                        std::isnan(p[i]) ? "NaN" : "an infinity", i - t.offset);
    return "a parameter is not finite";
}

// Reads a model file into a fresh flat buffer. Checks magic, version, every
// size and the exact length before allocating, and that every parameter is
// finite; never reads past the end. "" on success.
inline std::string read_model_file(const std::string &path, Config *c, float **params) {
    FILE *f = nullptr;
    size_t size = 0;
    int32_t h[256];
    std::string e = open_with_header(path, &f, &size, h);
    if (!e.empty()) return e;
    e = header_to_config(h, c);
    if (!e.empty()) { fclose(f); return path + ": " + e; }
    size_t n = num_params_of(c), want = 1024 + 4 * n;
    if (size != want) {
        fclose(f);
        return strf("%s: %s: %zu bytes, but the header's sizes need %zu (%zu parameters)", path.c_str(),
                    size < want ? "truncated" : "trailing bytes", size, want, n);
    }
    float *p = xcalloc_floats(n);
    e = read_exact(f, path, p, 4 * n);
    fclose(f);
    if (e.empty() && !(e = nonfinite_problem(c, p)).empty()) e = path + ": " + e;
    if (!e.empty()) { free(p); return e; }
    *params = p;
    return "";
}

inline std::string write_model_file(const std::string &path, const Config *c, const float *params) {
    int32_t h[256];
    config_to_header(c, h);
    return write_file_atomic(path, {{h, sizeof h}, {params, 4 * num_params_of(c)}});
}

// For the command-line tools: the model file, or an error naming the flag that
// gave it and the problem.
inline void read_model_or_die(const char *flag, const std::string &path, Config *c, float **params) {
    std::string e = read_model_file(path, c, params);
    if (!e.empty()) die("%s: %s", flag, e.c_str());
}

// Debug state (README, "File formats"): inputs, targets, logits, loss, gradients.
struct DebugState {
    int B, T, vocab_size;
    size_t num_params;
    std::vector<int> inputs, targets;
    std::vector<float> logits, grads;
    float loss;
};

inline std::string read_debug_state(const std::string &path, DebugState *s) {
    FILE *f = nullptr;
    size_t size = 0;
    int32_t h[256];
    std::string e = open_with_header(path, &f, &size, h);
    if (!e.empty()) return e;
    auto fail = [&](const std::string &why) { fclose(f); return why; };
    if (h[0] != STATE_MAGIC) return fail(strf("%s: bad magic %d (expected %d): not a debug-state file", path.c_str(), h[0], STATE_MAGIC));
    if (h[1] != 1) return fail(strf("%s: unsupported version %d", path.c_str(), h[1]));
    if (h[2] < 1 || h[3] < 1 || h[4] < 256 || h[5] < 1 || (int64_t)h[2] * h[3] > (1 << 24) || h[4] > (1 << 20))
        return fail(strf("%s: bad sizes B %d, T %d, vocab %d, num_params %d", path.c_str(), h[2], h[3], h[4], h[5]));
    for (int i = 6; i < 256; i++)
        if (h[i] != 0) return fail(strf("%s: header entry %d is %d, must be 0", path.c_str(), i, h[i]));
    s->B = h[2]; s->T = h[3]; s->vocab_size = h[4]; s->num_params = (size_t)h[5];
    size_t BT = (size_t)s->B * s->T;
    size_t want = 1024 + 4 * (2 * BT + BT * s->vocab_size + 1 + s->num_params);
    if (size != want) return fail(strf("%s: %zu bytes, but its header needs %zu", path.c_str(), size, want));
    s->inputs.resize(BT); s->targets.resize(BT); s->logits.resize(BT * s->vocab_size); s->grads.resize(s->num_params);
    e = read_exact(f, path, s->inputs.data(), 4 * BT);
    if (e.empty()) e = read_exact(f, path, s->targets.data(), 4 * BT);
    if (e.empty()) e = read_exact(f, path, s->logits.data(), 4 * BT * s->vocab_size);
    if (e.empty()) e = read_exact(f, path, &s->loss, 4);
    if (e.empty()) e = read_exact(f, path, s->grads.data(), 4 * s->num_params);
    fclose(f);
    if (!e.empty()) return e;
    for (size_t i = 0; i < BT; i++) {
        if (s->inputs[i] < 0 || s->inputs[i] >= s->vocab_size) return strf("%s: input %zu is %d, outside the vocabulary", path.c_str(), i, s->inputs[i]);
        if (s->targets[i] < -1 || s->targets[i] >= s->vocab_size) return strf("%s: target %zu is %d, outside the vocabulary", path.c_str(), i, s->targets[i]);
    }
    // reference values that are not finite compare to nothing
    auto finite = [](const std::vector<float> &v) { for (float x : v) if (!std::isfinite(x)) return false; return true; };
    if (!std::isfinite(s->loss) || !finite(s->logits) || !finite(s->grads))
        return strf("%s: the loss, logits or gradients hold a NaN or an infinity", path.c_str());
    return "";
}

inline std::string write_debug_state(const std::string &path, const DebugState *s) {
    int32_t h[256] = {0};
    h[0] = STATE_MAGIC; h[1] = 1; h[2] = s->B; h[3] = s->T; h[4] = s->vocab_size; h[5] = (int32_t)s->num_params;
    size_t BT = (size_t)s->B * s->T;
    return write_file_atomic(path, {{h, sizeof h}, {s->inputs.data(), 4 * BT}, {s->targets.data(), 4 * BT},
                                    {s->logits.data(), 4 * BT * s->vocab_size}, {&s->loss, 4},
                                    {s->grads.data(), 4 * s->num_params}});
}

// Optimizer state, PATH.opt (README.md "File formats"): int32 magic, version 1,
// step, flags length in bytes; uint64 num_params, params hash; the run's flags
// ('\n'-separated); float32 m, v; int32 n_history then (step, train loss, val
// bits/byte) float32 triples, one per step trained.
#define OPT_MAGIC 20250928

struct History { std::vector<float> step, train_loss, val_bpb; };

// FNV-1a over the parameters: ties an optimizer file to its model file, so a
// pair from two different moments is refused.
inline uint64_t params_hash(const float *p, size_t n) {
    const uint8_t *b = (const uint8_t *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n * 4; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

inline std::string write_opt_file(const std::string &path, int step, const std::vector<std::string> &run_flags, const float *params,
                                  const float *m, const float *v, size_t num_params, const History *h) {
    std::string flags;
    for (const std::string &f : run_flags) flags += f + "\n";
    int32_t head[4] = {OPT_MAGIC, 1, step, (int32_t)flags.size()};
    uint64_t head2[2] = {num_params, params_hash(params, num_params)};
    int32_t nh = (int32_t)h->step.size();
    std::vector<float> hist;
    for (int i = 0; i < nh; i++) { hist.push_back(h->step[i]); hist.push_back(h->train_loss[i]); hist.push_back(h->val_bpb[i]); }
    return write_file_atomic(path, {{head, sizeof head}, {head2, sizeof head2}, {flags.data(), flags.size()},
                                    {m, 4 * num_params}, {v, 4 * num_params}, {&nh, 4}, {hist.data(), 4 * hist.size()}});
}

struct OptState {
    int step;
    std::vector<std::string> flags;
    std::vector<float> m, v;
    History history;
};

#define MAX_FLAGS_BYTES (1 << 20)

// Reads PATH.opt for the model whose parameters are given. Every size is
// checked against the file's length before anything is allocated, and the
// contents are checked too: the step, the history (one entry per step), finite
// moments, flag syntax. "" on success, else the reason.
inline std::string read_opt_file(const std::string &path, const float *params, size_t num_params, OptState *s) {
    FILE *f = nullptr;
    size_t size = 0;
    std::string e = open_regular(path, &f, &size);
    if (!e.empty()) return e;
    auto fail = [&](const std::string &why) { fclose(f); return path + ": " + why; };
    int32_t head[4];
    uint64_t head2[2];
    if (size < sizeof head + sizeof head2) return fail("truncated header");
    e = read_exact(f, path, head, sizeof head);
    if (e.empty()) e = read_exact(f, path, head2, sizeof head2);
    if (!e.empty()) { fclose(f); return e; }
    if (head[0] != OPT_MAGIC || head[1] != 1) return fail("not a statex optimizer-state file (bad magic or version)");
    if (head2[0] != num_params) return fail(strf("holds %llu parameters, the model file %zu", (unsigned long long)head2[0], num_params));
    if (head2[1] != params_hash(params, num_params)) return fail("does not belong to this model file (parameter hash differs)");
    int step = head[2], nflags = head[3];
    // a checkpoint is saved after a step, and --steps is at most 2^30
    if (step < 1 || step > (1 << 30)) return fail(strf("step %d out of range 1..%d", step, 1 << 30));
    if (nflags < 0 || nflags > MAX_FLAGS_BYTES) return fail(strf("flags length %d out of range 0..%d", nflags, MAX_FLAGS_BYTES));
    // the history holds one entry per step, so the length is known exactly
    uint64_t want = 32 + (uint64_t)nflags + 8ull * num_params + 4 + 12ull * step;
    if (size != want) return fail(strf("%s: %zu bytes, but step %d and its header need %llu", size < want ? "truncated" : "wrong length",
                                       size, step, (unsigned long long)want));
    std::string flags(nflags, '\0');
    s->m.resize(num_params); s->v.resize(num_params);
    int32_t nh = 0;
    std::vector<float> hist(3 * (size_t)step);
    e = read_exact(f, path, &flags[0], nflags);
    if (e.empty()) e = read_exact(f, path, s->m.data(), 4 * num_params);
    if (e.empty()) e = read_exact(f, path, s->v.data(), 4 * num_params);
    if (e.empty()) e = read_exact(f, path, &nh, 4);
    if (e.empty()) e = read_exact(f, path, hist.data(), 4 * hist.size());
    fclose(f);
    if (!e.empty()) return e;
    if (nh != step) return strf("%s: %d history entries, but step %d needs one per step", path.c_str(), nh, step);
    for (size_t i = 0; i < num_params; i++)
        if (!std::isfinite(s->m[i]) || !std::isfinite(s->v[i]) || s->v[i] < 0)
            return strf("%s: AdamW moment %zu is not finite (or v < 0): m %g, v %g", path.c_str(), i, s->m[i], s->v[i]);
    for (int i = 0; i < nh; i++)
        if (hist[3 * i] != (float)(i + 1) || !std::isfinite(hist[3 * i + 1]) || std::isinf(hist[3 * i + 2]))
            return strf("%s: history entry %d is not step %d with a finite loss", path.c_str(), i, i + 1);
    // flags: "--name" then its value, one a line; their values are checked by
    // parsing them (see main)
    s->flags.clear();
    for (size_t p = 0, q; p < flags.size(); p = q + 1) {
        q = flags.find('\n', p);
        if (q == std::string::npos) return strf("%s: the stored flags do not end in a newline", path.c_str());
        s->flags.push_back(flags.substr(p, q - p));
    }
    for (size_t i = 0; i < s->flags.size(); i++) {
        const std::string &a = s->flags[i];
        bool bad = a.empty() || a.find('\0') != std::string::npos || a == "--help" || a == "-h";
        if (i == 0 && a.rfind("--", 0) != 0) bad = true;
        if (bad) return strf("%s: stored flag %zu ('%s') is malformed", path.c_str(), i, a.c_str());
    }
    s->step = step;
    s->history.step.clear(); s->history.train_loss.clear(); s->history.val_bpb.clear();
    for (int i = 0; i < nh; i++) {
        s->history.step.push_back(hist[3 * i]);
        s->history.train_loss.push_back(hist[3 * i + 1]);
        s->history.val_bpb.push_back(hist[3 * i + 2]);
    }
    return "";
}

// ----------------------------------------------------------------------------
// 6. the model API

enum { DEVICE_CPU = 0, DEVICE_CUDA = 1 };

// Recurrent state for generation: per layer, GLA S [B, H, dk, dv], or Mamba2
// h [B, nh, P, N] followed by the conv window [B, d_conv-1, E+2N].
// On the GPU the same layout in device memory.
struct RecState {
    int B;
    float *mem;
    float *layer[MAX_LAYER];
};

// AdamW with decoupled weight decay on the matrices only.
struct AdamWConfig {
    float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, weight_decay = 0.1f;
};

// One model on one device. For DEVICE_CUDA, params, grads, adam_m, adam_v and
// the activations are device pointers (same layouts); `gpu` holds the rest
// (device copies of the last forward's tokens, the gradient norm's partial sums).
struct Model {
    Config config;
    int device;
    std::vector<ParamTensor> tensors;   // the file layout
    std::vector<float> lr_scale;        // per tensor: learning-rate factor, 0 = frozen
    size_t num_params;
    float *params;  Weights w;          // parameters and pointers into them
    float *grads;   Weights g;          // same layout
    float *adam_m, *adam_v;             // AdamW moments (allocated on first update)
    // activations for up to B x T tokens (forward and backward)
    int B, T, n_threads;
    bool keep_steps;
    float *acts_mem; Acts acts;
    int mixer_form;                     // MIX_CHUNKED (default) or MIX_RECURRENT
    float loss;                         // of the last forward with targets
    int n_targets;                      // positions that counted in it
    const int *inputs, *targets;        // of the last forward (host pointers, for backward)
    int cur_B, cur_T;                   // of the last forward
    void *gpu;                          // CUDA only
};

// The fields of a new Model that do not depend on its device: the config
// (checked), the tensor table, learning-rate factors 1, no moments and no
// activations yet. Each backend's model_init calls it, then allocates and
// points m->w and m->g into its own buffers.
inline void model_init_common(Model *m, const Config *c, int device) {
    std::string e = config_problem(c);
    if (!e.empty()) die("bad config: %s", e.c_str());
    m->config = *c;
    m->device = device;
    m->gpu = nullptr;
    m->tensors = param_layout(c);
    m->lr_scale.assign(m->tensors.size(), 1.0f);
    m->num_params = m->tensors.back().offset + m->tensors.back().size();
    m->params = m->grads = m->adam_m = m->adam_v = nullptr;
    m->B = m->T = 0;
    m->n_threads = 1;
    m->keep_steps = false;
    m->acts_mem = nullptr;
    m->mixer_form = MIX_CHUNKED;
    m->loss = 0;
    m->n_targets = 0;
    m->inputs = m->targets = nullptr;
    m->cur_B = m->cur_T = 0;
}

namespace cpu {
// model lifecycle (statex_cpu.cpp)
void model_init(Model *m, const Config *c, float *params /* owned; nullptr = zeros */);
void model_alloc_acts(Model *m, int B, int T, bool keep_steps = false);
void model_free(Model *m);
void model_random_init(Model *m, uint64_t seed);
float *random_params(const Config *c, uint64_t seed);  // a fresh model's flat buffer (malloc'ed)
void init_layer_mixer(Model *m, int l, Rng *rng);  // fresh token-mixing weights of layer l
// forward over B x T tokens (host arrays); targets may be nullptr (no loss);
// state, when given, is the recurrent state to start from and is updated to the end.
void model_forward(Model *m, const int *inputs, const int *targets, int B, int T, RecState *state = nullptr);
// whether model_forward runs this forward's ops in one parallel region (a decode step)
bool forward_in_one_region(const Model *m, int B, int T, const RecState *state);
void model_zero_grad(Model *m);
void model_backward(Model *m);  // accumulates into m->grads
float model_grad_norm(Model *m);  // L2 norm over the trainable tensors
// one AdamW step on the trainable tensors, gradients multiplied by grad_scale
void model_update(Model *m, float lr, float grad_scale, int step, const AdamWConfig *opt);
// recurrent state for generation
void state_alloc(const Config *c, int B, RecState *s);
void state_zero(const Config *c, RecState *s);
void state_free(RecState *s);
size_t state_floats(const Config *c, int l, int B);
// the measured float32 GEMM rate of this machine (Eigen, all threads), GFLOP/s
double gemm_gflops(int M, int N, int K, double seconds);
// floats of scan scratch one parallel task needs for this config (the largest layer)
size_t scan_work_floats(const Config *c);
// StateX: expand the state of every `every`-th layer (statex_cpu.cpp has the
// modes); writes a new config and a fresh malloc'ed buffer. "" or the reason.
std::string expand_model(const Config *in, const float *params_in, const std::string &mode, int every, int factor,
                         uint64_t seed, Config *out, float **params_out);
}  // namespace cpu

// The same API on a CUDA GPU (statex.cu), same names. Host arrays in, the
// model's buffers on the device; the *_to_host / *_from_host calls move them.
namespace gpu {
bool available(std::string *why);  // false, with the reason, when no usable GPU
void model_init(Model *m, const Config *c, const float *host_params);
void model_alloc_acts(Model *m, int B, int T, bool keep_steps = false);
void model_free(Model *m);
void model_forward(Model *m, const int *inputs, const int *targets, int B, int T, RecState *state = nullptr);
void model_zero_grad(Model *m);
void model_backward(Model *m);
float model_grad_norm(Model *m);
void model_update(Model *m, float lr, float grad_scale, int step, const AdamWConfig *opt);
void params_to_host(const Model *m, float *dst);
void params_from_host(Model *m, const float *src);
void grads_to_host(const Model *m, float *dst);
void adam_to_host(const Model *m, float *m_dst, float *v_dst);     // moments, for checkpoints
void adam_from_host(Model *m, const float *m_src, const float *v_src);
void logits_to_host(const Model *m, float *dst);                     // cur_B * cur_T * vocab floats
void state_alloc(const Config *c, int B, RecState *s);
void state_zero(const Config *c, RecState *s);
void state_free(RecState *s);
size_t memory_peak_bytes();  // most device memory this process has held via the model API
}  // namespace gpu

#ifndef STATEX_CUDA
// Built without nvcc: the GPU API exists but says why it cannot run.
namespace gpu {
inline bool available(std::string *why) { *why = "this build has no CUDA support (nvcc was not found at build time)"; return false; }
[[noreturn]] inline void no_cuda() { die("this build has no CUDA support (nvcc was not found at build time)"); }
inline void model_init(Model *, const Config *, const float *) { no_cuda(); }
inline void model_alloc_acts(Model *, int, int, bool) { no_cuda(); }
inline void model_free(Model *) { no_cuda(); }
inline void model_forward(Model *, const int *, const int *, int, int, RecState *) { no_cuda(); }
inline void model_zero_grad(Model *) { no_cuda(); }
inline void model_backward(Model *) { no_cuda(); }
inline float model_grad_norm(Model *) { no_cuda(); }
inline void model_update(Model *, float, float, int, const AdamWConfig *) { no_cuda(); }
inline void params_to_host(const Model *, float *) { no_cuda(); }
inline void params_from_host(Model *, const float *) { no_cuda(); }
inline void grads_to_host(const Model *, float *) { no_cuda(); }
inline void adam_to_host(const Model *, float *, float *) { no_cuda(); }
inline void adam_from_host(Model *, const float *, const float *) { no_cuda(); }
inline void logits_to_host(const Model *, float *) { no_cuda(); }
inline void state_alloc(const Config *, int, RecState *) { no_cuda(); }
inline void state_zero(const Config *, RecState *) { no_cuda(); }
inline void state_free(RecState *) { no_cuda(); }
inline size_t memory_peak_bytes() { return 0; }
}  // namespace gpu
#endif

// ----------------------------------------------------------------------------
// 7. the op table: every op, declared once, in the order the tutorial reads
// them (statex_cpu.cpp and statex.cu define them in this same order, under the
// same names). Each backend fills one table, cpu::ops and gpu::ops; the model
// passes below run on either through it, and the compiler checks that every
// op of each backend has exactly the signature declared here.
// On the GPU every pointer is a device pointer, except crossentropy_forward's
// n_valid and adamw_update's config, which stay on the host. The math of each
// op is in the comment above its CPU definition. Backward ops ACCUMULATE (+=)
// into what they write, with one exception: the elementwise ops and the norms
// inside a block (swiglu, gla_gate, head_norm_gate, conv1d_silu, dt_softplus,
// gated_rmsnorm) WRITE (=) their input's gradient, as each is the only op that
// feeds it, so the backward need not zero those buffers first (their weight
// gradients still accumulate). rmsnorm_backward adds: its input's gradient is
// the residual stream's.
// Matmuls that read the same input (a GLA layer's q, k, v, og and gate
// projections; the MLP's gate and up): out[i] = inp w[i]^T, [N, OC[i]], no bias.
#define MATMUL_GROUP_MAX 5
struct MatmulGroup {
    int n;
    float *out[MATMUL_GROUP_MAX];
    const float *w[MATMUL_GROUP_MAX];
    int OC[MATMUL_GROUP_MAX];
};

struct Ops {
    // buffers: p[0..n) = 0; and moving a recurrent state between the per-sequence
    // layout [BH, X] (`flat`) and slot `slot` of the chunk-state layout
    // [BH, nslot, X] (`chunked`); flat == nullptr with to_chunked writes zeros
    void (*zero)(float *p, size_t n);
    void (*copy_states)(float *chunked, int nslot, int slot, float *flat, int BH, size_t X, bool to_chunked);
    // embedding, rmsnorm, linear layers, residual, SwiGLU (both families)
    void (*encoder_forward)(float *out, const int *tokens, const float *embed, int BT, int D);
    void (*encoder_backward)(float *dembed, const float *dout, const int *tokens, int BT, int D);
    void (*rmsnorm_forward)(float *out, float *rstd, const float *inp, const float *w, int N, int D);
    void (*rmsnorm_backward)(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                             const float *rstd, int N, int D);
    void (*matmul_forward)(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC);
    void (*matmul_group_forward)(const MatmulGroup *g, const float *inp, int N, int C);
    void (*matmul_backward)(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w,
                            int N, int C, int OC);
    void (*residual_forward)(float *out, const float *a, const float *b, size_t n);
    void (*swiglu_forward)(float *h, const float *g, const float *u, size_t n);
    void (*swiglu_backward)(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);
    // GLA: forget gate, token mixing (recurrent form, then chunked form), head norm and gate
    void (*gla_gate_forward)(float *a, const float *x, size_t n);
    void (*gla_gate_backward)(float *dx, const float *da, const float *x, size_t n);
    void (*gla_recurrent_forward)(float *o, float *S, float *S_all, const float *q, const float *k, const float *v,
                                  const float *a, int B, int T, int H, int K, int V);
    void (*gla_recurrent_backward)(float *dq, float *dk, float *dv, float *da, const float *dout, const float *S_all,
                                   const float *q, const float *k, const float *v, const float *a, int B, int T, int H,
                                   int K, int V, float *scratch, size_t scratch_per_task);
    void (*gla_chunk_forward)(float *o, float *S, const float *q, const float *k, const float *v, const float *a, int B,
                              int T, int H, int K, int V, float *scratch, size_t scratch_per_task);
    void (*gla_chunk_backward)(float *dq, float *dk, float *dv, float *da, const float *dout, const float *S,
                               const float *q, const float *k, const float *v, const float *a, int B, int T, int H,
                               int K, int V, float *scratch, size_t scratch_per_task);
    void (*head_norm_gate_forward)(float *out, float *rstd, const float *o, const float *og, const float *w, int BT,
                                   int H, int dv);
    void (*head_norm_gate_backward)(float *do_, float *dog, float *dw, const float *dout, const float *o,
                                    const float *og, const float *w, const float *rstd, int BT, int H, int dv);
    // Mamba2: causal conv, dt, SSD token mixing (recurrent, then chunked), decay and skip, gated norm
    void (*conv1d_silu_forward)(float *out, float *pre, const float *in, int in_stride, const float *w,
                                const float *bias, float *conv_state, int B, int T, int Cc, int W);
    void (*conv1d_silu_backward)(float *din, int din_stride, float *dw, float *dbias, const float *dout,
                                 const float *pre, const float *in, int in_stride, const float *w, int B, int T,
                                 int Cc, int W);
    void (*dt_softplus_forward)(float *dt, const float *raw, int raw_stride, const float *bias, int BT, int nh);
    void (*dt_softplus_backward)(float *draw, int draw_stride, float *dbias, const float *ddt, const float *raw,
                                 int raw_stride, const float *bias, int BT, int nh);
    void (*ssd_recurrent_forward)(float *y, float *hs, float *h_all, const float *xbc, const float *dt,
                                  const float *A_log, const float *Dskip, int B, int T, int nh, int P, int N);
    void (*ssd_recurrent_backward)(float *dxbc, float *ddt, float *dlda, const float *dy, const float *h_all,
                                   const float *xbc, const float *dt, const float *A_log, const float *Dskip, int B,
                                   int T, int nh, int P, int N, float *scratch, size_t scratch_per_task);
    void (*ssd_chunk_forward)(float *y, float *hs, const float *xbc, const float *dt, const float *A_log,
                              const float *Dskip, int B, int T, int nh, int P, int N, float *scratch,
                              size_t scratch_per_task);
    void (*ssd_chunk_backward)(float *dxbc, float *ddt, float *dlda, const float *dy, const float *hs,
                               const float *xbc, const float *dt, const float *A_log, const float *Dskip, int B, int T,
                               int nh, int P, int N, float *scratch, size_t scratch_per_task);
    void (*ssd_decay_backward)(float *ddt, float *dA_log, float *dD, const float *dlda, const float *dy,
                               const float *xbc, const float *dt, const float *A_log, int BT, int nh, int P, int N);
    void (*gated_rmsnorm_forward)(float *out, float *rstd, const float *y, const float *z, int z_stride,
                                  const float *w, int BT, int E);
    void (*gated_rmsnorm_backward)(float *dy, float *dz, int dz_stride, float *dw, const float *dout, const float *y,
                                   const float *z, int z_stride, const float *w, const float *rstd, int BT, int E, float *work);
    // the loss and the optimizer
    float (*crossentropy_forward)(float *losses, int *n_valid, const float *logits, const int *targets, int BT, int V);
    void (*crossentropy_backward)(float *dlogits, const float *logits, const int *targets, int BT, int V, float dloss);
    void (*adamw_update)(float *p, const float *grad, float *m, float *v, size_t n, float lr, float grad_scale,
                         float wd, int step, const AdamWConfig *o);
};
// Each backend fills its table with its own functions of these names, in this
// order: `const Ops ops = STATEX_OP_TABLE;` at the end of its ops. A missing op
// or a signature that differs from the field above does not compile.
#define STATEX_OP_TABLE { \
    .zero = zero, .copy_states = copy_states, .encoder_forward = encoder_forward, \
    .encoder_backward = encoder_backward, .rmsnorm_forward = rmsnorm_forward, .rmsnorm_backward = rmsnorm_backward, \
    .matmul_forward = matmul_forward, .matmul_group_forward = matmul_group_forward, .matmul_backward = matmul_backward, .residual_forward = residual_forward, \
    .swiglu_forward = swiglu_forward, .swiglu_backward = swiglu_backward, .gla_gate_forward = gla_gate_forward, \
    .gla_gate_backward = gla_gate_backward, .gla_recurrent_forward = gla_recurrent_forward, .gla_recurrent_backward = gla_recurrent_backward, \
    .gla_chunk_forward = gla_chunk_forward, .gla_chunk_backward = gla_chunk_backward, .head_norm_gate_forward = head_norm_gate_forward, \
    .head_norm_gate_backward = head_norm_gate_backward, .conv1d_silu_forward = conv1d_silu_forward, .conv1d_silu_backward = conv1d_silu_backward, \
    .dt_softplus_forward = dt_softplus_forward, .dt_softplus_backward = dt_softplus_backward, .ssd_recurrent_forward = ssd_recurrent_forward, \
    .ssd_recurrent_backward = ssd_recurrent_backward, .ssd_chunk_forward = ssd_chunk_forward, .ssd_chunk_backward = ssd_chunk_backward, \
    .ssd_decay_backward = ssd_decay_backward, .gated_rmsnorm_forward = gated_rmsnorm_forward, .gated_rmsnorm_backward = gated_rmsnorm_backward, \
    .crossentropy_forward = crossentropy_forward, .crossentropy_backward = crossentropy_backward, .adamw_update = adamw_update, \
}
namespace cpu { extern const Ops ops; }  // statex_cpu.cpp
namespace gpu { extern const Ops ops; }  // statex.cu (only in a CUDA build)

// ----------------------------------------------------------------------------
// 8. the model passes, written once for both backends: each layer is a list of
// op calls through the table `op`. cpu::model_forward and gpu::model_forward
// only put the tokens where their ops can read them and call these.

// What a forward over B x T tokens needs of the model; "" when it fits.
inline std::string forward_problem(const Model *m, int B, int T, const RecState *state) {
    if (B < 1 || T < 1) return strf("batch %d x %d is empty", B, T);
    if ((size_t)B * T > (size_t)m->B * m->T || T > m->T || B > m->B)
        return strf("%d x %d tokens exceed the activations allocated for %d x %d", B, T, m->B, m->T);
    if (m->mixer_form == MIX_RECURRENT && m->keep_steps && T != m->T) return strf("keep_steps needs T == %d", m->T);
    if (state && state->B != B) return strf("the recurrent state holds %d sequences, the batch %d", state->B, B);
    return "";
}

// GLA block: x += attn(rmsnorm(x) * attn_norm); x += mlp(rmsnorm(x) * mlp_norm)
inline void gla_layer_forward(const Ops *op, Model *m, int l, int B, int T, float *out, RecState *st) {
    const Config *c = &m->config;
    const LayerWeights *W = &m->w.layer[l];
    LayerActs *act = &m->acts.layer[l];
    int BT = B * T, D = c->d_model, K = c->key_dim, V = c->value_dim, r = c->gate_rank, F = c->mlp_hidden;
    int H = c->n_head[l], dk = K / H, dv = V / H;
    size_t X = (size_t)dk * dv;  // one head's state
    op->rmsnorm_forward(act->attn_in, act->attn_rstd, act->res, W->attn_norm, BT, D);
    MatmulGroup proj = {5, {act->q, act->k, act->v, act->og, act->gk_low},  // q, k, v, og and the gate's low rank
                        {W->q_proj, W->k_proj, W->v_proj, W->g_proj, W->gk_proj0}, {K, K, V, V, r}};
    op->matmul_group_forward(&proj, act->attn_in, BT, D);
    op->matmul_forward(act->gk_pre, act->gk_low, W->gk_proj1, W->gk_bias, BT, r, K);
    op->gla_gate_forward(act->gate, act->gk_pre, (size_t)BT * K);
    if (m->mixer_form == MIX_CHUNKED) {
        int ns = gla_state_slots(T);
        op->copy_states(act->S, ns, 0, st ? st->layer[l] : nullptr, B * H, X, true);  // zeros without a state
        op->gla_chunk_forward(act->o, act->S, act->q, act->k, act->v, act->gate, B, T, H, K, V, m->acts.scratch,
                              m->acts.scratch_per_task);
        if (st) op->copy_states(act->S, ns, ns - 1, st->layer[l], B * H, X, false);
    } else {
        float *run = st ? st->layer[l] : act->S;  // act->S is free scratch in this form
        if (!st) op->zero(run, (size_t)B * H * X);
        op->gla_recurrent_forward(act->o, run, act->S_all, act->q, act->k, act->v, act->gate, B, T, H, K, V);
    }
    op->head_norm_gate_forward(act->o_out, act->o_rstd, act->o, act->og, W->g_norm, BT, H, dv);
    op->matmul_forward(act->res_mid, act->o_out, W->o_proj, nullptr, BT, V, D);
    op->residual_forward(act->res_mid, act->res_mid, act->res, (size_t)BT * D);
    op->rmsnorm_forward(act->mlp_in, act->mlp_rstd, act->res_mid, W->mlp_norm, BT, D);
    MatmulGroup mlp = {2, {act->mlp_gate, act->mlp_up}, {W->gate_proj, W->up_proj}, {F, F}};
    op->matmul_group_forward(&mlp, act->mlp_in, BT, D);
    op->swiglu_forward(act->mlp_h, act->mlp_gate, act->mlp_up, (size_t)BT * F);
    op->matmul_forward(out, act->mlp_h, W->down_proj, nullptr, BT, F, D);
    op->residual_forward(out, out, act->res_mid, (size_t)BT * D);
}

// Mamba2 block: x += mixer(rmsnorm(x) * norm). The recurrent state of a layer
// is the SSM state [B, nh, P, N] followed by the conv window [B, W-1, Cc].
inline void mamba2_layer_forward(const Ops *op, Model *m, int l, int B, int T, float *out, RecState *st) {
    const Config *c = &m->config;
    const LayerWeights *W = &m->w.layer[l];
    LayerActs *act = &m->acts.layer[l];
    int BT = B * T, D = c->d_model, E = c->d_inner, N = c->d_state[l], nh = m2_nheads(c), P = c->headdim;
    int Din = m2_in_dim(c, l), Cc = m2_conv_dim(c, l);
    size_t X = (size_t)P * N;  // one head's state
    float *conv_state = st ? st->layer[l] + (size_t)B * nh * X : nullptr;
    op->rmsnorm_forward(act->norm_out, act->norm_rstd, act->res, W->norm, BT, D);
    op->matmul_forward(act->zxbcdt, act->norm_out, W->in_proj, nullptr, BT, D, Din);
    op->conv1d_silu_forward(act->xbc, act->conv_pre, act->zxbcdt + E, Din, W->conv_w, W->conv_b, conv_state, B, T, Cc, c->d_conv);
    op->dt_softplus_forward(act->dt, act->zxbcdt + E + Cc, Din, W->dt_bias, BT, nh);
    if (m->mixer_form == MIX_CHUNKED) {
        int nc = n_chunks(T, ssd_chunk_len(N));
        op->copy_states(act->h, nc + 1, 0, st ? st->layer[l] : nullptr, B * nh, X, true);  // zeros without a state
        op->ssd_chunk_forward(act->y, act->h, act->xbc, act->dt, W->A_log, W->D, B, T, nh, P, N, m->acts.scratch,
                              m->acts.scratch_per_task);
        if (st) op->copy_states(act->h, nc + 1, nc, st->layer[l], B * nh, X, false);
    } else {
        float *run = st ? st->layer[l] : act->h;  // act->h is free scratch in this form
        if (!st) op->zero(run, (size_t)B * nh * X);
        op->ssd_recurrent_forward(act->y, run, act->h_all, act->xbc, act->dt, W->A_log, W->D, B, T, nh, P, N);
    }
    op->gated_rmsnorm_forward(act->y_out, act->y_rstd, act->y, act->zxbcdt, Din, W->gnorm, BT, E);
    op->matmul_forward(out, act->y_out, W->out_proj, nullptr, BT, E, D);
    op->residual_forward(out, out, act->res, (size_t)BT * D);
}

// The whole forward, in two parts: tokens to logits (every op; it writes
// nothing but activations and the recurrent state), then the loss. tokens,
// targets: in the backend's memory (targets may be nullptr: no loss). The
// caller has checked forward_problem.
inline void model_logits_pass(const Ops *op, Model *m, const int *tokens, int B, int T, RecState *state) {
    const Config *c = &m->config;
    Acts *a = &m->acts;
    int BT = B * T, D = c->d_model;
    op->encoder_forward(a->layer[0].res, tokens, m->w.embed, BT, D);
    for (int l = 0; l < c->n_layer; l++) {
        float *out = l + 1 < c->n_layer ? a->layer[l + 1].res : a->res_final;
        if (c->family == FAMILY_GLA) gla_layer_forward(op, m, l, B, T, out, state);
        else mamba2_layer_forward(op, m, l, B, T, out, state);
    }
    op->rmsnorm_forward(a->final_out, a->final_rstd, a->res_final, m->w.norm_w, BT, D);
    op->matmul_forward(a->logits, a->final_out, m->w.lm_head, nullptr, BT, D, c->vocab_size);
}
inline void model_loss_pass(const Ops *op, Model *m, const int *targets, int B, int T) {
    const Config *c = &m->config;
    Acts *a = &m->acts;
    int BT = B * T;
    m->cur_B = B;
    m->cur_T = T;
    m->n_targets = 0;
    m->loss = targets ? op->crossentropy_forward(a->losses, &m->n_targets, a->logits, targets, BT, c->vocab_size) : 0.0f;
}
inline void model_forward_pass(const Ops *op, Model *m, const int *tokens, const int *targets, int B, int T,
                               RecState *state) {
    model_logits_pass(op, m, tokens, B, T, state);
    model_loss_pass(op, m, targets, B, T);
}

// The backward passes walk the same ops in reverse. a->dres carries the
// gradient of the residual stream from layer to layer; the nine row buffers
// a->drows[] are reused by every layer under the names given at the top of
// each function (a buffer's name says what gradient it holds at that point).
inline void gla_layer_backward(const Ops *op, Model *m, int l, int B, int T) {
    const Config *c = &m->config;
    const LayerWeights *W = &m->w.layer[l];
    LayerWeights *G = &m->g.layer[l];
    LayerActs *act = &m->acts.layer[l];
    Acts *a = &m->acts;
    int BT = B * T, D = c->d_model, K = c->key_dim, V = c->value_dim, r = c->gate_rank, F = c->mlp_hidden;
    int H = c->n_head[l], dv = V / H;
    float **d = a->drows;
    // the MLP: out = res_mid + down(silu(gate) * up); a->dres holds d out
    float *dmlp_h = d[0], *dmlp_gate = d[1], *dmlp_up = d[2], *dmlp_in = d[3];  // [BT, F] x 3, [BT, D]
    op->zero(dmlp_h, (size_t)BT * F); op->zero(dmlp_in, (size_t)BT * D);  // (swiglu writes dmlp_gate and dmlp_up)
    op->matmul_backward(dmlp_h, G->down_proj, nullptr, a->dres, act->mlp_h, W->down_proj, BT, F, D);
    op->swiglu_backward(dmlp_gate, dmlp_up, dmlp_h, act->mlp_gate, act->mlp_up, (size_t)BT * F);
    op->matmul_backward(dmlp_in, G->gate_proj, nullptr, dmlp_gate, act->mlp_in, W->gate_proj, BT, D, F);
    op->matmul_backward(dmlp_in, G->up_proj, nullptr, dmlp_up, act->mlp_in, W->up_proj, BT, D, F);
    op->rmsnorm_backward(a->dres, G->mlp_norm, dmlp_in, act->res_mid, W->mlp_norm, act->mlp_rstd, BT, D);  // now d res_mid
    // token mixing: res_mid = res + o_proj(norm_gate(scan(q, k, v, gate), og))
    float *do_out = d[0], *do_raw = d[1], *dog = d[2];          // [BT, V]: d o_out, d o (scan output), d og
    float *dq = d[3], *dk = d[4], *dv_ = d[5], *dgate = d[6];   // [BT, K], [BT, K], [BT, V], [BT, K]
    float *dgk_pre = d[7], *dgk_low = d[8], *dattn_in = d[0];  // [BT, K], [BT, r], [BT, D] (do_out is spent by then)
    op->zero(do_out, (size_t)BT * V);  // (the norm and gate write do_raw and dog)
    op->matmul_backward(do_out, G->o_proj, nullptr, a->dres, act->o_out, W->o_proj, BT, V, D);
    op->head_norm_gate_backward(do_raw, dog, G->g_norm, do_out, act->o, act->og, W->g_norm, act->o_rstd, BT, H, dv);
    op->zero(dq, (size_t)BT * K); op->zero(dk, (size_t)BT * K); op->zero(dv_, (size_t)BT * V); op->zero(dgate, (size_t)BT * K);
    if (m->mixer_form == MIX_CHUNKED)
        op->gla_chunk_backward(dq, dk, dv_, dgate, do_raw, act->S, act->q, act->k, act->v, act->gate, B, T, H, K, V, a->scratch,
                               a->scratch_per_task);
    else
        op->gla_recurrent_backward(dq, dk, dv_, dgate, do_raw, act->S_all, act->q, act->k, act->v, act->gate, B, T, H, K, V,
                                   a->scratch, a->scratch_per_task);
    op->zero(dgk_low, (size_t)BT * r); op->zero(dattn_in, (size_t)BT * D);  // (the gate writes dgk_pre)
    op->gla_gate_backward(dgk_pre, dgate, act->gk_pre, (size_t)BT * K);
    op->matmul_backward(dgk_low, G->gk_proj1, G->gk_bias, dgk_pre, act->gk_low, W->gk_proj1, BT, r, K);
    op->matmul_backward(dattn_in, G->gk_proj0, nullptr, dgk_low, act->attn_in, W->gk_proj0, BT, D, r);
    op->matmul_backward(dattn_in, G->q_proj, nullptr, dq, act->attn_in, W->q_proj, BT, D, K);
    op->matmul_backward(dattn_in, G->k_proj, nullptr, dk, act->attn_in, W->k_proj, BT, D, K);
    op->matmul_backward(dattn_in, G->v_proj, nullptr, dv_, act->attn_in, W->v_proj, BT, D, V);
    op->matmul_backward(dattn_in, G->g_proj, nullptr, dog, act->attn_in, W->g_proj, BT, D, V);
    op->rmsnorm_backward(a->dres, G->attn_norm, dattn_in, act->res, W->attn_norm, act->attn_rstd, BT, D);  // now d res
}

inline void mamba2_layer_backward(const Ops *op, Model *m, int l, int B, int T) {
    const Config *c = &m->config;
    const LayerWeights *W = &m->w.layer[l];
    LayerWeights *G = &m->g.layer[l];
    LayerActs *act = &m->acts.layer[l];
    Acts *a = &m->acts;
    int BT = B * T, D = c->d_model, E = c->d_inner, N = c->d_state[l], nh = m2_nheads(c), P = c->headdim;
    int Din = m2_in_dim(c, l), Cc = m2_conv_dim(c, l);
    float **d = a->drows;
    float *dy_out = d[0], *dy = d[1];              // [BT, E]: d of the gated norm's output, d of the SSD output y
    float *dzxbcdt = d[2], *dxbc = d[3];           // [BT, Din]: d in_proj output; [BT, Cc]: d conv output
    float *ddt = d[4], *dlda = d[5];               // [BT, nh]: d dt, d of the log decay dt A
    float *dnorm_out = d[6];                       // [BT, D]
    float *gnorm_work = d[7];                      // the gated norm backward's work space (2 E floats a block of rows)
    // (the gated norm writes dy and dzxbcdt's z part, the conv its xbc part, dt_softplus its dt part)
    op->zero(dy_out, (size_t)BT * E); op->zero(dxbc, (size_t)BT * Cc); op->zero(ddt, (size_t)BT * nh);
    op->zero(dlda, (size_t)BT * nh); op->zero(dnorm_out, (size_t)BT * D);
    op->matmul_backward(dy_out, G->out_proj, nullptr, a->dres, act->y_out, W->out_proj, BT, E, D);
    op->gated_rmsnorm_backward(dy, dzxbcdt, Din, G->gnorm, dy_out, act->y, act->zxbcdt, Din, W->gnorm, act->y_rstd, BT, E, gnorm_work);
    if (m->mixer_form == MIX_CHUNKED)
        op->ssd_chunk_backward(dxbc, ddt, dlda, dy, act->h, act->xbc, act->dt, W->A_log, W->D, B, T, nh, P, N, a->scratch,
                               a->scratch_per_task);
    else
        op->ssd_recurrent_backward(dxbc, ddt, dlda, dy, act->h_all, act->xbc, act->dt, W->A_log, W->D, B, T, nh, P, N,
                                   a->scratch, a->scratch_per_task);
    op->ssd_decay_backward(ddt, G->A_log, G->D, dlda, dy, act->xbc, act->dt, W->A_log, BT, nh, P, N);
    op->dt_softplus_backward(dzxbcdt + E + Cc, Din, G->dt_bias, ddt, act->zxbcdt + E + Cc, Din, W->dt_bias, BT, nh);
    op->conv1d_silu_backward(dzxbcdt + E, Din, G->conv_w, G->conv_b, dxbc, act->conv_pre, act->zxbcdt + E, Din, W->conv_w,
                             B, T, Cc, c->d_conv);
    op->matmul_backward(dnorm_out, G->in_proj, nullptr, dzxbcdt, act->norm_out, W->in_proj, BT, D, Din);
    op->rmsnorm_backward(a->dres, G->norm, dnorm_out, act->res, W->norm, act->norm_rstd, BT, D);  // now d res
}

// The whole backward of the last forward; accumulates into m->grads.
// tokens, targets: the last forward's, in the backend's memory.
inline void model_backward_pass(const Ops *op, Model *m, const int *tokens, const int *targets) {
    const Config *c = &m->config;
    Acts *a = &m->acts;
    int B = m->cur_B, T = m->cur_T, BT = B * T, D = c->d_model;
    // loss -> logits -> final norm
    float *dfinal_out = a->drows[0];  // [BT, D]
    op->zero(a->dlogits, (size_t)BT * c->vocab_size);
    if (m->n_targets > 0) op->crossentropy_backward(a->dlogits, a->logits, targets, BT, c->vocab_size, 1.0f / m->n_targets);
    op->zero(dfinal_out, (size_t)BT * D);
    op->zero(a->dres, (size_t)BT * D);
    op->matmul_backward(dfinal_out, m->g.lm_head, nullptr, a->dlogits, a->final_out, m->w.lm_head, BT, D, c->vocab_size);
    op->rmsnorm_backward(a->dres, m->g.norm_w, dfinal_out, a->res_final, m->w.norm_w, a->final_rstd, BT, D);
    for (int l = c->n_layer - 1; l >= 0; l--) {
        if (c->family == FAMILY_GLA) gla_layer_backward(op, m, l, B, T);
        else mamba2_layer_backward(op, m, l, B, T);
    }
    op->encoder_backward(m->g.embed, a->dres, tokens, BT, D);
}

// One AdamW step on the trainable tensors (lr_scale 0 = frozen), weight decay
// on the matrices only.
inline void model_update_pass(const Ops *op, Model *m, float lr, float grad_scale, int step, const AdamWConfig *opt) {
    for (size_t t = 0; t < m->tensors.size(); t++) {
        const ParamTensor &pt = m->tensors[t];
        if (m->lr_scale[t] == 0.0f) continue;
        op->adamw_update(m->params + pt.offset, m->grads + pt.offset, m->adam_m + pt.offset, m->adam_v + pt.offset,
                         pt.size(), lr * m->lr_scale[t], grad_scale, pt.is_matrix ? opt->weight_decay : 0.0f, step, opt);
    }
}

// ----------------------------------------------------------------------------
// 9. the model API on the model's own device (m->device), written once for the
// command-line tools: dev::model_forward(m, ...) calls cpu:: or gpu::.

namespace dev {
inline bool on_gpu(const Model *m) { return m->device == DEVICE_CUDA; }
// puts a fresh model on `device` ("cpu" or "cuda"); takes ownership of params
inline void model_init(Model *m, const Config *c, float *params, const std::string &device) {
    if (device == "cuda") {
        std::string why;
        if (!gpu::available(&why)) die("--device cuda: %s", why.c_str());
        gpu::model_init(m, c, params);
        free(params);
    } else if (device == "cpu") {
        cpu::model_init(m, c, params);
    } else {
        die("--device: '%s' is not cpu or cuda", device.c_str());
    }
}
inline void model_alloc_acts(Model *m, int B, int T) { on_gpu(m) ? gpu::model_alloc_acts(m, B, T) : cpu::model_alloc_acts(m, B, T); }
inline void model_forward(Model *m, const int *in, const int *tg, int B, int T, RecState *st = nullptr) {
    on_gpu(m) ? gpu::model_forward(m, in, tg, B, T, st) : cpu::model_forward(m, in, tg, B, T, st);
}
inline void model_zero_grad(Model *m) { on_gpu(m) ? gpu::model_zero_grad(m) : cpu::model_zero_grad(m); }
inline void model_backward(Model *m) { on_gpu(m) ? gpu::model_backward(m) : cpu::model_backward(m); }
inline float model_grad_norm(Model *m) { return on_gpu(m) ? gpu::model_grad_norm(m) : cpu::model_grad_norm(m); }
inline void model_update(Model *m, float lr, float scale, int step, const AdamWConfig *o) {
    on_gpu(m) ? gpu::model_update(m, lr, scale, step, o) : cpu::model_update(m, lr, scale, step, o);
}
inline void model_free(Model *m) { on_gpu(m) ? gpu::model_free(m) : cpu::model_free(m); }
// host copies: on the CPU the model's own buffers, on the GPU copied into *buf
inline const float *params_on_host(const Model *m, std::vector<float> *buf) {
    if (!on_gpu(m)) return m->params;
    buf->resize(m->num_params);
    gpu::params_to_host(m, buf->data());
    return buf->data();
}
inline const float *grads_on_host(const Model *m, std::vector<float> *buf) {
    if (!on_gpu(m)) return m->grads;
    buf->resize(m->num_params);
    gpu::grads_to_host(m, buf->data());
    return buf->data();
}
// the logits of the last forward, [cur_B * cur_T, vocab]
inline const float *logits_on_host(const Model *m, std::vector<float> *buf) {
    if (!on_gpu(m)) return m->acts.logits;
    buf->resize((size_t)m->cur_B * m->cur_T * m->config.vocab_size);
    gpu::logits_to_host(m, buf->data());
    return buf->data();
}
// a recurrent state for B sequences on the model's device
inline void state_alloc(const Model *m, int B, RecState *s) { on_gpu(m) ? gpu::state_alloc(&m->config, B, s) : cpu::state_alloc(&m->config, B, s); }
inline void state_zero(const Model *m, RecState *s) { on_gpu(m) ? gpu::state_zero(&m->config, s) : cpu::state_zero(&m->config, s); }
inline void state_free(const Model *m, RecState *s) { on_gpu(m) ? gpu::state_free(s) : cpu::state_free(s); }
}  // namespace dev
