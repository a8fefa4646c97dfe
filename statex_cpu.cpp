// statex_cpu.cpp: every op of the two model families, forward and backward,
// in plain C++ (Eigen for the big matmuls, OpenMP for the parallel loops), and
// the model-level forward and backward passes built from them.
//
// Conventions (the same in statex.cu):
//   - Tensors are row-major; activations have B*T rows, one per token, token t
//     of sequence b at row b*T + t.
//   - Linear weights are [out, in], so y = x W^T.
//   - Every backward op ACCUMULATES (+=) into the gradients it writes, input
//     and weight gradients alike; the caller zeroes them first. A tensor used
//     twice (a residual, the tied embedding) then needs no extra code. One
//     exception: the elementwise ops and norms inside a block (swiglu,
//     gla_gate, head_norm_gate, conv1d_silu, dt_softplus, gated_rmsnorm) are
//     the only op feeding their input's gradient, so they WRITE (=) it and the
//     caller zeroes nothing for them (zeroing was 2-2.5% of a training step).
//   - The recurrent form of each token mixer is the readable truth; the chunked
//     form is the fast path with the same math; tests tie the two together.
//   - Every result is bitwise reproducible for a given thread count: a sum over
//     tokens (a weight gradient) is split across threads by columns, or by
//     fixed blocks of rows whose partial sums are then added in block order
//     (`omp ordered`), so no two threads add into the same number in a racy
//     order. That is what lets a resumed training run match an uninterrupted
//     one exactly.
//
// Here only: `#pragma omp simd` marks a loop along a row whose pointers never
// overlap, which GCC cannot prove alone (it kept some such loops scalar). The
// pragma changes no result: each element gets the same operations.
#include "model.h"
#include <algorithm>
#include <omp.h>
#include <atomic>
#include <thread>
#include <Eigen/Dense>

namespace cpu {

typedef Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> MatRM;
typedef Eigen::Map<MatRM> MapM;
typedef Eigen::Map<const MatRM> MapCM;
// rows of `cols` floats, a stride apart: a block of columns of a wider matrix
typedef Eigen::Map<const MatRM, 0, Eigen::OuterStride<>> RowsC;
typedef Eigen::Map<MatRM, 0, Eigen::OuterStride<>> Rows;
// `len` rows of `cols` floats, `stride` floats apart (a chunk of a head's
// columns of q, v, xbc, y ..), as an Eigen matrix over our buffer
static RowsC rows_c(const float *p, int len, int cols, int stride) { return RowsC(p, len, cols, Eigen::OuterStride<>(stride)); }
static Rows rows(float *p, int len, int cols, int stride) { return Rows(p, len, cols, Eigen::OuterStride<>(stride)); }

static inline float silu(float x) { return x * sigmoidf_(x); }
// silu'(x) from s = sigmoid(x): a backward that needs silu and silu' of the
// same x takes both from one sigmoid (one exp and one division, not two)
static inline float silu_grad_from(float x, float s) { return s * (1.0f + x * (1.0f - s)); }
static inline float silu_grad(float x) { return silu_grad_from(x, sigmoidf_(x)); }

// ----------------------------------------------------------------------------
// shared by the ops: when a loop is worth threads; sums along a row

// An op with less than about PAR_MIN floats of work runs on the calling thread
// alone: starting and joining the threads would cost more than they save. A
// decode step (one token per sequence) is mostly such ops.
#define PAR_MIN 16384

// parallel_for(n, work, body): body(i) for i = 0 .. n-1, each thread taking one
// fixed block of i (a static schedule). It is `#pragma omp parallel for` with
// two differences, both for the decode step, which is some thirty small ops:
//   - with work < PAR_MIN it runs on the calling thread and never enters
//     OpenMP: an `if` clause still opens a team of one, and libgomp ends every
//     team with a barrier that makes a system call (about 1 us in a VM);
//   - called inside a parallel region that is already open (cpu::model_forward
//     opens one around a whole decode step), it starts no threads: every thread
//     of that region calls the op, does its own block, and waits at
//     team_barrier, which spins instead of sleeping. Small work then goes to
//     thread 0 alone (splitting it too measured 4% slower on a decode step).
// Each i is computed the same way whichever thread takes it, so the results
// do not depend on the number of threads. (team_barrier's counters are
// static: one such region at a time in a process, as ./infer runs.)
static void team_barrier() {
    static std::atomic<int> arrived{0}, phase{0};
    int my_phase = phase.load(std::memory_order_relaxed);  // read before arriving: it cannot move until we have
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == omp_get_num_threads() - 1) {
        arrived.store(0, std::memory_order_relaxed);        // the last to arrive resets the count and opens it
        phase.store(my_phase + 1, std::memory_order_release);
    } else {
        for (long spins = 0; phase.load(std::memory_order_acquire) == my_phase; spins++) {
#if defined(__x86_64__)
            __builtin_ia32_pause();  // (tells the core we are waiting: a hyperthread sibling runs faster)
#endif
            if (spins > 20000) std::this_thread::yield();  // a long wait, or more threads than cores
        }
    }
}
template <typename F> static void parallel_for(long n, size_t work, F body) {
    if (omp_in_parallel()) {
        int nt = omp_get_num_threads(), id = omp_get_thread_num();
        long lo = n * id / nt, hi = n * (id + 1) / nt;
        if (work < PAR_MIN) lo = 0, hi = id == 0 ? n : 0;
        for (long i = lo; i < hi; i++) body(i);
        team_barrier();
    } else if (work < PAR_MIN || omp_get_max_threads() == 1) {
        for (long i = 0; i < n; i++) body(i);
    } else {
        #pragma omp parallel for schedule(static)
        for (long i = 0; i < n; i++) body(i);
    }
}

// A thread that walks rows reading one stretch of each (a block of channels,
// a group of heads, a slice of a wider matrix such as in_proj's output) makes
// the hardware prefetchers, which follow runs of cache lines, lose the trail
// at every row, and the loop waits on memory. Such loops ask for their
// stretches ROWS_AHEAD rows ahead. (A prefetch changes no result.)
#define ROWS_AHEAD 8
static inline void prefetch_stretch(const float *p, int n, bool for_write) {
    for (int i = 0; i < n; i += 16)  // a cache line each
        for_write ? __builtin_prefetch(p + i, 1) : __builtin_prefetch(p + i, 0);
}

// sum_{i<n} f(i) in 4 x 16 partial sums, added up as a tree: the terms
// vectorise and no add waits on the one before (a plain running sum does
// neither: without -ffast-math the compiler must keep its order). The order
// is fixed by n alone, so results stay the same run to run.
template <typename F> static inline float sum_of(int n, F f) {
    float acc[4][16] = {}, s[16];
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 4; k++)
            for (int l = 0; l < 16; l++) acc[k][l] += f(i + 16 * k + l);
    for (; i + 16 <= n; i += 16)
        for (int l = 0; l < 16; l++) acc[0][l] += f(i + l);
    for (int l = 0; l < 16; l++) s[l] = (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
    for (int half = 8; half >= 1; half /= 2)
        for (int l = 0; l < half; l++) s[l] += s[l + half];
    for (; i < n; i++) s[0] += f(i);
    return s[0];
}

// vecf: VEC floats, one machine vector register, through GCC's vector
// extension (+ and * act lane by lane). A type wider than the machine's
// registers (16 floats on AVX2) compiles to shuffles through memory.
#if defined(__AVX512F__)
#define VEC 16
#elif defined(__AVX__)
#define VEC 8
#else
#define VEC 4
#endif
typedef float vecf __attribute__((vector_size(VEC * sizeof(float))));
typedef float vec4f __attribute__((vector_size(4 * sizeof(float))));
static inline vecf loadv(const float *p) { vecf v; memcpy(&v, p, sizeof v); return v; }

// dotv: the vectors of dot and dot_pair, DOTV floats: at most 8 (32 bytes),
// even on AVX-512. A row of W can start 32 bytes into a 64-byte cache line
// (the parameter buffer packs its tensors end to end: after Mamba2's three
// 8-float vectors dt_bias, A_log and D, what follows sits 32 bytes off), and
// a 64-byte load across two lines costs two: mamba2-small decoding spent
// 127-129 us a token in its matrix-vector products with 16-float loads, 80-84
// us with 8-float ones. The sums are the same at any width (see tree64).
#define DOTV (VEC < 8 ? VEC : 8)
typedef float dotv __attribute__((vector_size(DOTV * sizeof(float))));
static inline dotv loadd(const float *p) { dotv v; memcpy(&v, p, sizeof v); return v; }

// The sum of 64 partial sums (lane l of acc[k] holds sum k DOTV + l) in the
// order sum_of ends with: s[l] = (sum l + sum 16+l) + (sum 32+l + sum 48+l)
// for l < 16, then s[l] += s[l + half] for half = 8, 4, 2, 1, done as adds of
// vector halves. Through memory and scalar adds the tree cost as much as
// reading a 256-float row of W from cache: decoding at batch 8 gained 15-25%
// from this, at batch 1 up to 7 points of the bandwidth bound.
static inline float tree64(const dotv *acc) {
    dotv v[16 / DOTV];
    for (int q = 0; q < 16 / DOTV; q++) v[q] = (acc[q] + acc[q + 16 / DOTV]) + (acc[q + 32 / DOTV] + acc[q + 48 / DOTV]);
#if DOTV == 8
    dotv h8 = v[0] + v[1];
    vec4f h4 = __builtin_shufflevector(h8, h8, 0, 1, 2, 3) + __builtin_shufflevector(h8, h8, 4, 5, 6, 7);
#else
    vec4f h4 = (v[0] + v[2]) + (v[1] + v[3]);
#endif
    return (h4[0] + h4[2]) + (h4[1] + h4[3]);
}

// dot(a, b, n) = sum_of(n, a[i] * b[i]): the same 64 partial sums (element
// i + j of each 64 goes to sum j) and the same tree after them, on any ISA,
// but written on vectors (dotv) so that the sums stay in registers through
// the loop (sum_of's generic form keeps them in memory there). It is the inner
// loop of a decode step's matrix-vector products, whose rows are short. Every
// product is fused into its sum, which sum_of's 16-wide tail does not do, so
// the last bit can differ from sum_of's for some n.
static inline float dot(const float *a, const float *b, int n) {
    dotv acc[64 / DOTV] = {};
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 64 / DOTV; k++) acc[k] += loadd(a + i + k * DOTV) * loadd(b + i + k * DOTV);
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16 / DOTV; k++) acc[k] += loadd(a + i + k * DOTV) * loadd(b + i + k * DOTV);
    float s = tree64(acc);
    for (; i < n; i++) s += a[i] * b[i];  // a tail of under 16 after the tree, as sum_of adds it
    return s;
}

// step(i, k) for the VEC-float vectors of a row of n floats, in blocks of 64
// then of 16 as dot walks it: vector k of each block feeds sums k VEC ..
// k VEC + VEC - 1 of dot's 64. Returns where the scalar tail starts.
template <typename F> static inline int over_vectors(int n, F step) {
    int i = 0;
    for (; i + 64 <= n; i += 64)
        for (int k = 0; k < 64 / VEC; k++) step(i, k);
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16 / VEC; k++) step(i, k);
    return i;
}

// dot(w, a, n) and dot(w, b, n) together, bit for bit the same, each load of
// w serving both: with several rows per decode step (batched generation) the
// two chains of sums keep the core busy where one waits on its adds. Used on
// AVX-512 only (see matvec_column), and with its full 16-float vectors: with
// twice the work per byte of W they measured faster here than dot's 8-float
// ones (batch 8, gla-small: 8590-9125 against 6711-8226 tokens/s). Inlined by
// force, as is matvec_column: GCC judged them too large and called both once
// per row of W, and a batch-8 sweep over gla-small's decode matrices took
// 1.25-1.55x as long (Zen 4, 2 threads).
__attribute__((always_inline)) static inline void dot_pair(const float *w, const float *a, const float *b, int n, float *sa, float *sb) {
    vecf acc_a[64 / VEC] = {}, acc_b[64 / VEC] = {};
    int i = over_vectors(n, [&](int i, int k) {
        vecf wv = loadv(w + i + k * VEC);
        acc_a[k] += wv * loadv(a + i + k * VEC);
        acc_b[k] += wv * loadv(b + i + k * VEC);
    });
    dotv sums_a[64 / DOTV], sums_b[64 / DOTV];  // the same 64 sums, in dot's vectors
    memcpy(sums_a, acc_a, sizeof sums_a);
    memcpy(sums_b, acc_b, sizeof sums_b);
    float ta = tree64(sums_a), tb = tree64(sums_b);
    for (; i < n; i++) ta += w[i] * a[i], tb += w[i] * b[i];
    *sa = ta;
    *sb = tb;
}

// h = decay h + x b, then return dot(h, c, n) (the same 64 sums), in one
// pass: the new h goes from the registers into the sums rather than being
// stored and read back (a Mamba2 decode step's state update: 27-35% faster
// at N = 64, more than twice as fast at N = 16).
static inline float decay_add_dot(float *h, const float *b, const float *c, float decay, float x, int n) {
    vecf acc[64 / VEC] = {}, decays = decay - (vecf){}, xs = x - (vecf){};
    int i = over_vectors(n, [&](int i, int k) {
        vecf hk = decays * loadv(h + i + k * VEC) + xs * loadv(b + i + k * VEC);
        memcpy(h + i + k * VEC, &hk, sizeof hk);
        acc[k] += hk * loadv(c + i + k * VEC);
    });
    dotv sums[64 / DOTV];  // the same 64 sums, in dot's vectors
    memcpy(sums, acc, sizeof sums);
    float s = tree64(sums);
    for (; i < n; i++) h[i] = decay * h[i] + x * b[i], s += h[i] * c[i];
    return s;
}

// ----------------------------------------------------------------------------
// buffers: zero n floats; move recurrent states between the per-sequence
// layout [BH, X] and slot `slot` of the chunk-state layout [BH, nslot, X]
// (flat == nullptr with to_chunked: zeros, a fresh start)

// A large buffer in blocks, so that both threads write (a memset is one
// thread's bandwidth). A small one is a plain memset, with no OpenMP at all:
// ops call zero inside their parallel loops, and there even a false `if`
// clause would open a nested team of one and pay its closing barrier.
static void zero(float *p, size_t n) {
    const size_t block = 1 << 16;
    if (n < 2 * block) { memset(p, 0, n * sizeof(float)); return; }
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i += block) memset(p + i, 0, std::min(block, n - i) * sizeof(float));
}
static void copy_states(float *chunked, int nslot, int slot, float *flat, int BH, size_t X, bool to_chunked) {
    for (int i = 0; i < BH; i++) {
        float *a = chunked + ((size_t)i * nslot + slot) * X, *b = flat ? flat + (size_t)i * X : nullptr;
        if (!to_chunked) memcpy(b, a, X * sizeof(float));
        else if (b) memcpy(a, b, X * sizeof(float));
        else zero(a, X);
    }
}

// ----------------------------------------------------------------------------
// embedding: out[t] = embed[token[t]]

static void encoder_forward(float *out, const int *tokens, const float *embed, int BT, int D) {
    parallel_for(BT, (size_t)BT * D, [&](long t) { memcpy(out + t * D, embed + (size_t)tokens[t] * D, D * sizeof(float)); });
}
// dembed[token[t]] += dout[t]; two tokens may share a row, so threads own column blocks
static void encoder_backward(float *dembed, const float *dout, const int *tokens, int BT, int D) {
    #pragma omp parallel for
    for (int j0 = 0; j0 < D; j0 += 64) {
        int j1 = std::min(D, j0 + 64);
        for (int t = 0; t < BT; t++) {
            float *d = dembed + (size_t)tokens[t] * D;
            const float *g = dout + (size_t)t * D;
            for (int j = j0; j < j1; j++) d[j] += g[j];
        }
    }
}

// ----------------------------------------------------------------------------
// rmsnorm: out = x * rstd * w,  rstd = 1 / sqrt(mean(x^2) + eps)
// backward, with n = x * rstd and g = dout * w:
//   dx = rstd * (g - n * mean(g * n)),   dw += sum over rows of dout * n

static void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int D) {
    parallel_for(N, (size_t)N * D, [&](long i) {
        const float *x = inp + i * D;
        float *y = out + i * D;
        float r = 1.0f / sqrtf(dot(x, x, D) / D + RMS_EPS);
        rstd[i] = r;
        for (int j = 0; j < D; j++) y[j] = x[j] * r * w[j];
    });
}

// The width of blocks that split n items into an even number of blocks of at
// most `most`, as equal as multiples of `align` allow, so that two threads
// share them evenly (192 rows as 128 + 64 left one thread idle a third of the
// time). It depends on n alone: no result depends on the thread count.
static int even_block(int n, int most, int align) {
    int nblock = (n + most - 1) / most;
    nblock += nblock % 2;
    return ((n + nblock - 1) / nblock + align - 1) / align * align;
}

// Sums over rows into a [cols] vector: dst[j] += sum_i f(i, j), threads
// owning blocks of columns (so the order of every sum is fixed). A block is
// up to SUM_COLS wide: walking the rows one cache line at a time would wait on
// memory at every row, a wider block reads each row as one stream.
#define SUM_COLS 128
template <typename F> static void sum_rows_into(float *dst, int rows, int cols, F f) {
    int width = even_block(cols, SUM_COLS, 16);
    #pragma omp parallel for schedule(dynamic)
    for (int j0 = 0; j0 < cols; j0 += width) {
        int j1 = std::min(cols, j0 + width);
        float acc[SUM_COLS] = {0};
        for (int i = 0; i < rows; i++)
            for (int j = j0; j < j1; j++) acc[j - j0] += f(i, j);
        for (int j = j0; j < j1; j++) dst[j] += acc[j - j0];
    }
}

static void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w, const float *rstd, int N, int D) {
    #pragma omp parallel for
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * D, *dy = dout + (size_t)i * D;
        float *dx = dinp + (size_t)i * D;
        float r = rstd[i], mean_gn = sum_of(D, [&](int j) { return dy[j] * w[j] * x[j] * r; }) / D;
        for (int j = 0; j < D; j++) dx[j] += r * (dy[j] * w[j] - x[j] * r * mean_gn);
    }
    sum_rows_into(dw, N, D, [&](int i, int j) { return dout[(size_t)i * D + j] * inp[(size_t)i * D + j] * rstd[i]; });
}

// ----------------------------------------------------------------------------
// matmul: out[N, OC] = inp[N, C] W[OC, C]^T (+ bias[OC])
// backward: dinp += dout W,  dW += dout^T inp,  dbias += column sums of dout
//
// The threads split the work themselves, in fixed blocks: MM_ROWS rows of the
// output (for dW, even_block's blocks of at most MM_ROWS rows), each block one
// Eigen GEMM that runs on its own thread (Eigen does not parallelise a product
// inside a parallel region). Eigen's own parallel GEMM makes its threads wait for each other after every slice of the
// inner dimension; on a busy machine those waits cost more than the arithmetic.
// A block's sums run in an order fixed by its size alone, whichever thread
// takes it, so the results do not depend on the schedule.
#define MM_ROWS 128

// Rows r0 .. r0+MM_ROWS-1 (or fewer, at the end) of out = inp W^T (+ bias).
static void matmul_block(float *out, const float *inp, const float *w, const float *bias, int r0, int N, int C, int OC) {
    int n = std::min(MM_ROWS, N - r0);
    MapM y(out + (size_t)r0 * OC, n, OC);
    y.noalias() = MapCM(inp + (size_t)r0 * C, n, C) * MapCM(w, OC, C).transpose();
    if (bias) y.rowwise() += Eigen::Map<const Eigen::RowVectorXf>(bias, OC);
}

// A decode step has one row per sequence (N <= MATVEC_ROWS), so the product
// is bound by reading W once: each row o of W is read once for all N inputs
// (one dot product each), and the threads split the rows of W in fixed blocks.
#define MATVEC_ROWS 8
__attribute__((always_inline)) static inline void matvec_column(float *out, const float *inp, const float *w, const float *bias, int o, int N, int C, int OC) {
    const float *wo = w + (size_t)o * C;
    float b = bias ? bias[o] : 0.0f;
    int n = 0;
#if defined(__AVX512F__)  // (two sets of sums fit AVX-512's 32 vector registers; AVX2 has 16, and spilling measured slower)
    for (; n + 2 <= N; n += 2) {  // two inputs per pass over the row
        float s0, s1;
        dot_pair(wo, inp + (size_t)n * C, inp + (size_t)(n + 1) * C, C, &s0, &s1);
        out[(size_t)n * OC + o] = s0 + b;
        out[(size_t)(n + 1) * OC + o] = s1 + b;
    }
#endif
    for (; n < N; n++) out[(size_t)n * OC + o] = dot(wo, inp + (size_t)n * C, C) + b;
}
// One input (batch 1, the usual decode step): what matvec_column computes for
// N = 1, with nothing else in the threads' walk over the rows. Through
// matvec_column (generic in N, dot_pair's two sets of sums beside the one
// needed) a sweep over gla-small's decode matrices took 15-30% longer (Zen 4,
// 2 threads), whether GCC called matvec_column per row or inlined it. The
// choice between the two is made once per block of rows (matvec_block):
// matvec_column handing N = 1 on to matvec_one itself measured 20% slower.
static inline void matvec_one(float *out, const float *inp, const float *w, const float *bias, int o, int C) {
    out[o] = dot(w + (size_t)o * C, inp, C) + (bias ? bias[o] : 0.0f);
}
// Rows MATVEC_BLOCK b .. MATVEC_BLOCK b + MATVEC_BLOCK - 1 of W (fewer at the
// end): the threads' tasks in a decode step's products. With a task of one
// row, each row of W was a call of the task's lambda (GCC does not inline a
// lambda this large into parallel_for's loop) and then of dot: gla-small's
// batch-1 generation ran at 41-47% of the bandwidth bound, in blocks at
// 51-55% (Zen 4, 2 threads, five alternating runs). `flatten` inlines all
// it calls (GCC otherwise called dot, or tree64, once per row, the 64 sums
// going through memory), and only here: forced inline everywhere, dot let
// GCC fuse a multiply into a subtraction differently in the SSD backward,
// and training's results changed in the last bit. A block of 16 is one
// cache line of each output row, asked for 64 columns ahead of the stores
// (the output lines were last read by other threads).
#define MATVEC_BLOCK 16
__attribute__((flatten)) static void matvec_block(float *out, const float *inp, const float *w, const float *bias, long b, int N, int C, int OC) {
    int o0 = b * MATVEC_BLOCK, o1 = std::min(OC, o0 + MATVEC_BLOCK);
    if (o0 + 64 < OC)
        for (int r = 0; r < N; r++) __builtin_prefetch(out + (size_t)r * OC + o0 + 64, 1);
    if (N == 1)
        for (int o = o0; o < o1; o++) matvec_one(out, inp, w, bias, o, C);
    else
        for (int o = o0; o < o1; o++) matvec_column(out, inp, w, bias, o, N, C, OC);
}
static int matvec_blocks(int OC) { return (OC + MATVEC_BLOCK - 1) / MATVEC_BLOCK; }

static void matmul_forward(float *out, const float *inp, const float *w, const float *bias, int N, int C, int OC) {
    if (N <= MATVEC_ROWS) {
        parallel_for(matvec_blocks(OC), (size_t)OC * C, [&](long b) { matvec_block(out, inp, w, bias, b, N, C, OC); });
        return;
    }
    #pragma omp parallel for schedule(dynamic)
    for (int r0 = 0; r0 < N; r0 += MM_ROWS) matmul_block(out, inp, w, bias, r0, N, C, OC);
}

// A group of matmuls that read the same input (model.h, MatmulGroup):
// out_i = inp W_i^T, each computed exactly as matmul_forward computes it, all
// in one parallel loop over the members' tasks (matvec_block's blocks of rows
// of W_i when decoding, blocks of rows of inp otherwise). Waking the threads
// costs a few microseconds, as much as a decode step's small matrix-vector
// product, so a layer's five projections pay it once rather than five times.
// Its backward is the members' matmul_backward.
static void matmul_group_forward(const MatmulGroup *g, const float *inp, int N, int C) {
    bool decode = N <= MATVEC_ROWS;
    int per[MATMUL_GROUP_MAX], tasks = 0;
    size_t work = 0;
    for (int i = 0; i < g->n; i++) {
        per[i] = decode ? matvec_blocks(g->OC[i]) : (N + MM_ROWS - 1) / MM_ROWS;
        tasks += per[i];
        work += (size_t)g->OC[i] * C;
    }
    auto member = [&](int *t) { int i = 0; while (*t >= per[i]) *t -= per[i++]; return i; };  // task -> (member, index)
    if (decode) {
        parallel_for(tasks, work, [&](long task) {
            int b = task, i = member(&b);
            matvec_block(g->out[i], inp, g->w[i], nullptr, b, N, C, g->OC[i]);
        });
        return;
    }
    #pragma omp parallel for schedule(dynamic)
    for (int task = 0; task < tasks; task++) {
        int b = task, i = member(&b);
        matmul_block(g->out[i], inp, g->w[i], nullptr, b * MM_ROWS, N, C, g->OC[i]);
    }
}

static void matmul_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp, const float *w, int N, int C, int OC) {
    if (dinp) {  // blocks of rows of dinp
        #pragma omp parallel for schedule(dynamic)
        for (int r0 = 0; r0 < N; r0 += MM_ROWS) {
            int n = std::min(MM_ROWS, N - r0);
            MapM(dinp + (size_t)r0 * C, n, C).noalias() += MapCM(dout + (size_t)r0 * OC, n, OC) * MapCM(w, OC, C);
        }
    }
    if (dw) {  // blocks of rows of dW (columns of dout), each summing over all N tokens
        int rb = even_block(OC, MM_ROWS, 8);
        #pragma omp parallel for schedule(dynamic)
        for (int o0 = 0; o0 < OC; o0 += rb) {
            int n = std::min(rb, OC - o0);
            MapM(dw + (size_t)o0 * C, n, C).noalias() += rows_c(dout + o0, N, n, OC).transpose() * MapCM(inp, N, C);
        }
    }
    // the bias sum in a fixed order (Eigen's colwise().sum() may reorder it by alignment)
    if (dbias) sum_rows_into(dbias, N, OC, [&](int i, int j) { return dout[(size_t)i * OC + j]; });
}

// residual: out = a + b (out may be a or b)
static void residual_forward(float *out, const float *a, const float *b, size_t n) {
    parallel_for(n, n, [&](long i) { out[i] = a[i] + b[i]; });
}

// ----------------------------------------------------------------------------
// SwiGLU: h = silu(g) * u;  dg = dh * u * silu'(g),  du = dh * silu(g)

static void swiglu_forward(float *h, const float *g, const float *u, size_t n) {
    parallel_for(n, n, [&](long i) { h[i] = silu(g[i]) * u[i]; });
}
static void swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        float s = sigmoidf_(g[i]);
        dg[i] = dh[i] * u[i] * silu_grad_from(g[i], s);
        du[i] = dh[i] * (g[i] * s);
    }
}

// ----------------------------------------------------------------------------
// GLA forget gate: a = logsigmoid(x) / 16  (a <= 0 is the log of the decay)
// logsigmoid(x) = min(x, 0) - log(1 + e^-|x|);  d/dx = sigmoid(-x), so dx = da sigmoid(-x) / 16

// log(1 + y) for 0 <= y <= 1 in a form that vectorises (libm's log1pf does
// not): u = 1 + y = 2^e m with m in [1/sqrt2, sqrt2], log m = 2 atanh(f/(2+f))
// with f = m - 1, |f/(2+f)| <= 0.172, so five odd terms reach float precision.
// u rounds y; the factor y / (u - 1) (exact here) puts the lost bits back.
static inline float log1p_unit(float y) {
    float u = 1.0f + y;
    if (u == 1.0f) return y;
    bool big = u > 1.41421356f;
    float m = big ? 0.5f * u : u, f = m - 1.0f, s = f / (2.0f + f), s2 = s * s;
    float series = s * (2.0f + s2 * (2.0f / 3 + s2 * (2.0f / 5 + s2 * (2.0f / 7 + s2 * (2.0f / 9)))));
    return ((big ? 0.69314718f : 0.0f) + series) * (y / (u - 1.0f));
}

static void gla_gate_forward(float *a, const float *x, size_t n) {
    parallel_for(n, n, [&](long i) { a[i] = (std::min(x[i], 0.0f) - log1p_unit(exp_fast(-fabsf(x[i])))) / 16.0f; });
}
static void gla_gate_backward(float *dx, const float *da, const float *x, size_t n) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) dx[i] = da[i] * sigmoidf_(-x[i]) / 16.0f;
}

// ----------------------------------------------------------------------------
// GLA token mixing, recurrent form (the readable truth). Per sequence and head,
// with q_t, k_t in R^hk, v_t in R^hv, a_t in R^hk (log decay per key channel),
// hk = K/H and hv = V/H the per-head sizes (README's dk, dv):
//     S_t = diag(exp(a_t)) S_{t-1} + k_t v_t^T        S in R^{hk x hv}
//     o_t = hk^-1/2 S_t^T q_t
// Head h reads columns h*hk.. of q, k, a and h*hv.. of v, writes h*hv.. of o.
// S: [B, H, hk, hv], the state to start from, updated in place to the end.
// S_all: nullptr, or [B, H, T, hk, hv] to keep S_t for the backward pass.

static void gla_recurrent_forward(float *o, float *S, float *S_all, const float *q, const float *k, const float *v,
                           const float *a, int B, int T, int H, int K, int V) {
    int hk = K / H, hv = V / H;
    float scale = 1.0f / sqrtf((float)hk);
    parallel_for(B * H, (size_t)B * T * K * hv, [&](long bh) {  // one (sequence, head) each
        int b = bh / H, h = bh % H;
        float *Sbh = S + ((size_t)b * H + h) * hk * hv;
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            const float *qt = q + row * K + h * hk, *kt = k + row * K + h * hk, *at = a + row * K + h * hk;
            const float *vt = v + row * V + h * hv;
            float *ot = o + row * V + h * hv;
            for (int j = 0; j < hv; j++) ot[j] = 0;
            for (int i = 0; i < hk; i++) {
                float decay = exp_fast(at[i]), qi = qt[i] * scale;
                float *Si = Sbh + (size_t)i * hv;
                for (int j = 0; j < hv; j++) {
                    Si[j] = decay * Si[j] + kt[i] * vt[j];
                    ot[j] += qi * Si[j];
                }
            }
            if (S_all) memcpy(S_all + (((size_t)b * H + h) * T + t) * hk * hv, Sbh, sizeof(float) * hk * hv);
        }
    });
}

// Backward of the recurrent form, from a zero initial state, walking t down
// (⊙ is the elementwise product, rowsum sums each row of a matrix):
//     dS   += hk^-1/2 q_t do_t^T                (now the gradient of S_t)
//     dq_t += hk^-1/2 S_t do_t,  dk_t += dS v_t,  dv_t += dS^T k_t
//     da_t += exp(a_t) ⊙ rowsum(dS ⊙ S_{t-1})
//     dS    = diag(exp(a_t)) dS                  (the gradient of S_{t-1})
// scratch: one [hk, hv] slice per thread, for dS.
static void gla_recurrent_backward(float *dq, float *dk, float *dv, float *da, const float *dout, const float *S_all,
                            const float *q, const float *k, const float *v, const float *a, int B, int T, int H, int K, int V,
                            float *scratch, size_t scratch_per_task) {
    int hk = K / H, hv = V / H;
    float scale = 1.0f / sqrtf((float)hk);
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *dS = scratch + omp_get_thread_num() * scratch_per_task;
            zero(dS, (size_t)hk * hv);
            const float *Sbh = S_all + ((size_t)b * H + h) * T * hk * hv;
            for (int t = T - 1; t >= 0; t--) {
                size_t row = (size_t)b * T + t;
                const float *qt = q + row * K + h * hk, *kt = k + row * K + h * hk, *at = a + row * K + h * hk;
                const float *vt = v + row * V + h * hv, *dot = dout + row * V + h * hv;
                float *dqt = dq + row * K + h * hk, *dkt = dk + row * K + h * hk, *dat = da + row * K + h * hk;
                float *dvt = dv + row * V + h * hv;
                const float *St = Sbh + (size_t)t * hk * hv, *Sprev = t > 0 ? St - (size_t)hk * hv : nullptr;
                for (int i = 0; i < hk; i++) {
                    float *dSi = dS + (size_t)i * hv;
                    const float *Si = St + (size_t)i * hv;
                    float sq = 0, sk = 0, sa = 0;
                    for (int j = 0; j < hv; j++) {
                        dSi[j] += scale * qt[i] * dot[j];
                        sq += Si[j] * dot[j];
                        sk += dSi[j] * vt[j];
                        dvt[j] += dSi[j] * kt[i];
                        if (Sprev) sa += dSi[j] * Sprev[(size_t)i * hv + j];
                    }
                    float decay = exp_fast(at[i]);
                    dqt[i] += scale * sq;
                    dkt[i] += sk;
                    dat[i] += decay * sa;
                    for (int j = 0; j < hv; j++) dSi[j] *= decay;
                }
            }
        }
}

// ----------------------------------------------------------------------------
// GLA token mixing, chunked form (the fast path). Split the sequence into
// chunks of C = GLA_CHUNK steps; inside a chunk let b_t = a_t0 + .. + a_t be the
// cumulative log decay (a vector over key channels, <= 0, falling). With S_in
// the state entering the chunk, ⊙ the elementwise product and ⟨x, y⟩ a dot product:
//     o_t   = (q_t ⊙ e^{b_t})^T S_in' + sum_{s<=t} Â_ts v_s      (S_in' = hk^-1/2 S_in)
//     Â_ts  = hk^-1/2 sum_i q_t[i] k_s[i] e^{b_t[i] - b_s[i]}     (the scaled scores)
//     S_out = diag(e^{b_last}) S_in + sum_s (k_s ⊙ e^{b_last - b_s}) v_s^T
// Every decay factor is a product of per-step decays e^{a_u} <= 1, e.g.
// e^{b_t - b_s} = e^{a_s+1} ⊙ .. ⊙ e^{a_t}: one exp per step and channel, and
// no e^{-b} that would overflow once b falls below about -88 (a product only
// underflows towards 0, as the true value does). In matrix form, per chunk
// (Q, K: len x hk; V, O: len x hv; Â: len x len, zero above the diagonal):
//     O     = Qd S_in + Â V                     Qd = hk^-1/2 Q ⊙ e^{b}
//     S_out = diag(e^{b_last}) S_in + Kd^T V      Kd = K ⊙ e^{b_last - b}
// so all but the scores are small GEMMs.
// S: [B, H, gla_state_slots(T), hk, hv]: the state entering every
// GLA_STATE_EVERY-th chunk and last the final state (model.h); S[.., 0, ..] is
// the initial state (input), the rest are written. These kept states are all
// the backward pass keeps of the recurrence; it recomputes the states between
// them, one group of GLA_STATE_EVERY chunks at a time.

// Where one (sequence, head, chunk) task reads and writes.
struct GlaChunk {
    size_t row0;      // first row of the chunk
    int len, h;       // its length, the head
    int K, V, hk, hv;
    float scale;      // hk^-1/2
};

// The scratch of one (sequence, head) task in the chunked GLA passes, carved
// from one thread's slice. gla_work(nullptr, ..) only counts: its return
// value's `floats` is the size of the slice (cpu::scan_work_floats uses it).
struct GlaWork {
    float *decay;       // [C, hk] e^{a_t}, the decay of each step
    float *from_start;  // [C, hk] e^{b_t}
    float *to_end;      // [C, hk] e^{b_last - b_t}
    float *qd, *kd;     // [C, hk] the rows Qd and Kd above
    float *kT;          // [hk, C] the chunk's k transposed, zero past its length
    float *E;           // [hk, C] or [C, hk]: e^{b_t - b_s} of the current row t, rolled forward
    float *A;           // [C, C] the scaled scores Â_ts, zero above the diagonal
    float *dA;          // [C, C] their gradient
    float *tmp;         // [C, hk] a product before it is scaled by the decays
    float *dS;          // [hk, hv] gradient of the state leaving the chunk
    float *dq_local, *dk_local;  // [C, hk] the chunk's own dq, dk (complete once the chunk is done)
    float *run;         // [hk] running reverse sum of the decay gradient
    float *group;       // [GLA_STATE_EVERY - 1, hk, hv] the states entering the chunks between two kept ones
    size_t floats;
};
static GlaWork gla_work(float *ws, int hk, int hv) {
    const size_t C = GLA_CHUNK;
    GlaWork w;
    size_t off = 0;
    auto take = [&](float **slot, size_t n) { *slot = ws ? ws + off : nullptr; off += n; };
    take(&w.decay, C * hk); take(&w.from_start, C * hk); take(&w.to_end, C * hk);
    take(&w.qd, C * hk); take(&w.kd, C * hk); take(&w.kT, C * hk); take(&w.E, C * hk);
    take(&w.A, C * C); take(&w.dA, C * C); take(&w.tmp, C * hk);
    take(&w.dS, (size_t)hk * hv);
    take(&w.dq_local, C * hk); take(&w.dk_local, C * hk);
    take(&w.run, hk);
    take(&w.group, (size_t)(GLA_STATE_EVERY - 1) * hk * hv);
    w.floats = off;
    return w;
}

// Where the state entering chunk c lives (c == nc: the final state): every
// GLA_STATE_EVERY-th one, and the final one, in the kept slots Sbh of S; the
// ones between in the work's group buffer. The backward writes only the latter.
static float *gla_state_at(const float *Sbh, float *group, int c, int nc, size_t X) {
    const int E = GLA_STATE_EVERY;
    if (c % E == 0 || c == nc) return (float *)Sbh + (size_t)((c + E - 1) / E) * X;
    return group + (size_t)(c % E - 1) * X;
}

// The chunk's decays, as running products of the steps' e^{a_t}: e^{b_t}
// forward from the chunk's start, e^{b_last - b_t} back from its end; and from
// them the rows Qd and Kd that meet the states (q == nullptr: Kd only, all the
// state update needs, for the backward's recompute of the states).
static void gla_chunk_decay(GlaWork *w, const GlaChunk *ch, const float *q, const float *k, const float *a) {
    int len = ch->len, hk = ch->hk;
    for (int t = 0; t < len; t++) {
        const float *at = a + (ch->row0 + t) * ch->K + ch->h * hk;
        float *dt = w->decay + t * hk, *ft = w->from_start + t * hk;
        #pragma omp simd
        for (int i = 0; i < hk; i++) dt[i] = exp_fast(at[i]);
        if (t == 0) memcpy(ft, dt, hk * sizeof(float));
        else for (int i = 0; i < hk; i++) ft[i] = ft[i - hk] * dt[i];
    }
    for (int t = len - 1; t >= 0; t--) {
        float *et = w->to_end + t * hk;
        for (int i = 0; i < hk; i++) et[i] = t == len - 1 ? 1.0f : et[i + hk] * w->decay[(t + 1) * hk + i];
    }
    for (int t = 0; t < len; t++) {
        size_t off = (ch->row0 + t) * ch->K + ch->h * hk;
        for (int i = 0; i < hk; i++) w->kd[t * hk + i] = k[off + i] * w->to_end[t * hk + i];
        if (q)
            for (int i = 0; i < hk; i++) w->qd[t * hk + i] = ch->scale * q[off + i] * w->from_start[t * hk + i];
    }
}

// The scaled scores Â, a row t at a time, all C columns s side by side (in
// C / VEC machine vectors, see vecf): E[i][s] = e^{b_t[i] - b_s[i]} rolls forward, E_t = E_{t-1} ⊙ e^{a_t}
// in the columns s < t, 1 in column t, 0 beyond, which is also the causal mask.
// The backward pass calls this again (with gla_chunk_decay) rather than keep Â.
static void gla_chunk_scores(GlaWork *w, const GlaChunk *ch, const float *q, const float *k) {
    const int C = GLA_CHUNK;
    int hk = ch->hk;
    for (int i = 0; i < hk; i++)
        for (int s = 0; s < C; s++) {
            w->kT[i * C + s] = s < ch->len ? k[(ch->row0 + s) * ch->K + ch->h * hk + i] : 0.0f;
            w->E[i * C + s] = 0.0f;
        }
    for (int t = 0; t < ch->len; t++) {
        const float *qt = q + (ch->row0 + t) * ch->K + ch->h * hk, *dt = w->decay + t * hk;
        vecf row[C / VEC] = {}, unit_t[C / VEC] = {};  // unit_t: 1 in column t
        unit_t[t / VEC][t % VEC] = 1.0f;
        for (int i = 0; i < hk; i++) {
            float *Ei = w->E + i * C;
            const float *ki = w->kT + i * C;
            for (int u = 0; u < C / VEC; u++) {
                vecf e = loadv(Ei + u * VEC) * dt[i] + unit_t[u];  // column t was 0 until now
                memcpy(Ei + u * VEC, &e, sizeof e);
                row[u] += ch->scale * qt[i] * loadv(ki + u * VEC) * e;
            }
        }
        memcpy(w->A + t * C, row, sizeof row);
    }
}

// The state leaving a chunk, from the state entering it (after gla_chunk_decay):
//     S_out = diag(e^{b_last}) S_in + Kd^T V
// The forward and the backward's recomputation both run this, so the states
// the backward recomputes are the forward's, bit for bit.
static void gla_chunk_state(float *Sout, const float *Sin, const GlaWork *w, const GlaChunk *ch, const float *v) {
    int hk = ch->hk, hv = ch->hv;
    const float *flast = w->from_start + (ch->len - 1) * hk;
    MapM So(Sout, hk, hv);
    So.noalias() = MapCM(w->kd, ch->len, hk).transpose() * rows_c(v + ch->row0 * ch->V + ch->h * hv, ch->len, hv, ch->V);
    for (int i = 0; i < hk; i++) {
        float *So_i = Sout + (size_t)i * hv;
        const float *Si = Sin + (size_t)i * hv;
        #pragma omp simd
        for (int j = 0; j < hv; j++) So_i[j] += flast[i] * Si[j];
    }
}

static void gla_chunk_forward(float *o, float *S, const float *q, const float *k, const float *v, const float *a,
                       int B, int T, int H, int K, int V, float *scratch, size_t scratch_per_task) {
    const int C = GLA_CHUNK, nc = n_chunks(T, C);
    int hk = K / H, hv = V / H;
    size_t X = (size_t)hk * hv;
    float scale = 1.0f / sqrtf((float)hk);
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            GlaWork w = gla_work(scratch + omp_get_thread_num() * scratch_per_task, hk, hv);
            float *Sbh = S + ((size_t)b * H + h) * gla_state_slots(T) * X;
            for (int c = 0; c < nc; c++) {
                size_t row0 = (size_t)b * T + (size_t)c * C;
                int len = std::min(C, T - c * C);
                GlaChunk ch = {row0, len, h, K, V, hk, hv, scale};
                const float *Sin = gla_state_at(Sbh, w.group, c, nc, X);
                gla_chunk_decay(&w, &ch, q, k, a);
                gla_chunk_scores(&w, &ch, q, k);
                Rows O = rows(o + row0 * V + h * hv, len, hv, V);
                O.noalias() = MapCM(w.qd, len, hk) * MapCM(Sin, hk, hv);           // the state entering the chunk
                O.noalias() += rows_c(w.A, len, len, C) * rows_c(v + row0 * V + h * hv, len, hv, V);  // the chunk
                gla_chunk_state(gla_state_at(Sbh, w.group, c + 1, nc, X), Sin, &w, &ch, v);
            }
        }
}

// Backward of the chunked form, chunks in reverse, carrying dS (the gradient of
// the state leaving the chunk). With dÂ_ts = hk^-1/2 ⟨do_t, v_s⟩ for s <= t:
//     dq_t  = e^{b_t} ⊙ (hk^-1/2 S_in do_t) + sum_{s<=t} dÂ_ts e^{b_t-b_s} ⊙ k_s
//     dk_s  = sum_{t>=s} dÂ_ts e^{b_t-b_s} ⊙ q_t + e^{b_last-b_s} ⊙ (dS v_s)
//     dv_s  = sum_{t>=s} Â_ts do_t + dS^T (k_s ⊙ e^{b_last-b_s})
//     dS_in = hk^-1/2 sum_t (q_t ⊙ e^{b_t}) do_t^T + diag(e^{b_last}) dS
// (Â carries the hk^-1/2 of the forward; the code keeps Â in w.A.)
// The decay gradient needs no per-step state: every term depends on the decay
// only through differences of the global cumulative sum B_t, and
//     dL/dB_t = q_t ⊙ dq_t - k_t ⊙ dk_t        (a vector over key channels),
// so da_t = sum_{t' >= t} (q_t' ⊙ dq_t' - k_t' ⊙ dk_t'), a reverse running sum
// that we carry across the chunks as we walk back.
// The chunks go in groups of GLA_STATE_EVERY, last group first: the group's
// states between the kept ones are recomputed forward from the kept one at its
// start (gla_chunk_state, as the forward made them), then its chunks are
// walked in reverse. The four phases of one chunk are the four functions below.

// Phase 1, inside the chunk: dÂ = hk^-1/2 dO V^T, dV += Â^T dO, and the s < t
// terms of dq and dk (the diagonal s = t waits for phase 4), with E[s] =
// e^{b_t - b_s} rolled forward over t as gla_chunk_scores does, a row per s.
static void gla_chunk_backward_intra(GlaWork *w, const GlaChunk *ch, float *dv, const float *dout, const float *q,
                                     const float *k, const float *v) {
    const int C = GLA_CHUNK;
    int K = ch->K, V = ch->V, hk = ch->hk, hv = ch->hv, h = ch->h, len = ch->len;
    size_t row0 = ch->row0;
    RowsC dO = rows_c(dout + row0 * V + h * hv, len, hv, V);
    rows(w->dA, len, len, C).noalias() = ch->scale * dO * rows_c(v + row0 * V + h * hv, len, hv, V).transpose();
    rows(dv + row0 * V + h * hv, len, hv, V).noalias() += rows_c(w->A, len, len, C).transpose() * dO;
    for (int t = 0; t < len; t++) {
        const float *qt = q + (row0 + t) * K + h * hk, *dt = w->decay + t * hk;
        float *dqt = w->dq_local + t * hk;
        if (t) for (int i = 0; i < hk; i++) w->E[(t - 1) * hk + i] = 1.0f;
        for (int s = 0; s < t; s++) {
            const float *ks = k + (row0 + s) * K + h * hk;
            float *Es = w->E + s * hk, *dks = w->dk_local + s * hk, g = w->dA[t * C + s];
            #pragma omp simd
            for (int i = 0; i < hk; i++) {
                Es[i] *= dt[i];
                dqt[i] += g * Es[i] * ks[i];
                dks[i] += g * Es[i] * qt[i];
            }
        }
    }
}

// Phase 2, across chunks: o_t read S_in (dq), and S_out was built from k_s, v_s
// (dk, dv), using dS, the gradient of S_out, before phase 3 moves it to S_in:
//     dq += hk^-1/2 e^{b} ⊙ (dO S_in^T),  dk += e^{b_last - b} ⊙ (V dS^T),  dV += Kd dS
static void gla_chunk_backward_inter(GlaWork *w, const GlaChunk *ch, float *dv, const float *dout, const float *Sin,
                                     const float *v) {
    int V = ch->V, hk = ch->hk, hv = ch->hv, h = ch->h, len = ch->len;
    size_t row0 = ch->row0, n = (size_t)len * hk;
    RowsC dO = rows_c(dout + row0 * V + h * hv, len, hv, V), Vc = rows_c(v + row0 * V + h * hv, len, hv, V);
    MapCM dS(w->dS, hk, hv);
    MapM tmp(w->tmp, len, hk);
    tmp.noalias() = dO * MapCM(Sin, hk, hv).transpose();
    for (size_t x = 0; x < n; x++) w->dq_local[x] += ch->scale * w->from_start[x] * w->tmp[x];
    tmp.noalias() = Vc * dS.transpose();
    for (size_t x = 0; x < n; x++) w->dk_local[x] += w->to_end[x] * w->tmp[x];
    rows(dv + row0 * V + h * hv, len, hv, V).noalias() += MapCM(w->kd, len, hk) * dS;
}

// Phase 3: dS becomes the gradient of S_in, to carry into the previous chunk:
//     dS_in = diag(e^{b_last}) dS + Qd^T dO
static void gla_chunk_backward_state(GlaWork *w, const GlaChunk *ch, const float *dout) {
    int hk = ch->hk, hv = ch->hv;
    const float *flast = w->from_start + (ch->len - 1) * hk;
    MapM dS(w->dS, hk, hv);
    for (int i = 0; i < hk; i++) {
        float *dS_i = w->dS + (size_t)i * hv;
        #pragma omp simd
        for (int j = 0; j < hv; j++) dS_i[j] *= flast[i];
    }
    dS.noalias() += MapCM(w->qd, ch->len, hk).transpose() * rows_c(dout + ch->row0 * ch->V + ch->h * hv, ch->len, hv, ch->V);
}

// Phase 4: write dq, dk and the decay gradient (the reverse running sum). The
// diagonal terms (s = t: dÂ_tt k_t in dq_t, dÂ_tt q_t in dk_t) cancel exactly
// in q ⊙ dq - k ⊙ dk, so they stay out of it (in float32 they would not
// cancel exactly) and go into dq, dk only.
static void gla_chunk_backward_write(GlaWork *w, const GlaChunk *ch, float *dq, float *dk, float *da, const float *q,
                                     const float *k) {
    int hk = ch->hk;
    for (int t = ch->len - 1; t >= 0; t--) {
        size_t off = (ch->row0 + t) * ch->K + ch->h * hk;
        const float *qt = q + off, *kt = k + off;
        float diag = w->dA[t * GLA_CHUNK + t];
        #pragma omp simd
        for (int i = 0; i < hk; i++) {
            float gq = w->dq_local[t * hk + i], gk = w->dk_local[t * hk + i];
            w->run[i] += qt[i] * gq - kt[i] * gk;
            da[off + i] += w->run[i];
            dq[off + i] += gq + diag * kt[i];
            dk[off + i] += gk + diag * qt[i];
        }
    }
}

static void gla_chunk_backward(float *dq, float *dk, float *dv, float *da, const float *dout, const float *S,
                               const float *q, const float *k, const float *v, const float *a, int B, int T, int H,
                               int K, int V, float *scratch, size_t scratch_per_task) {
    const int C = GLA_CHUNK, E = GLA_STATE_EVERY, nc = n_chunks(T, C);
    int hk = K / H, hv = V / H;
    size_t X = (size_t)hk * hv;
    float scale = 1.0f / sqrtf((float)hk);
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            GlaWork w = gla_work(scratch + omp_get_thread_num() * scratch_per_task, hk, hv);
            const float *Sbh = S + ((size_t)b * H + h) * gla_state_slots(T) * X;
            zero(w.dS, X);
            zero(w.run, hk);
            for (int c0 = (nc - 1) / E * E; c0 >= 0; c0 -= E) {  // the group of chunks c0 .. c1-1
                int c1 = std::min(nc, c0 + E);
                for (int c = c0; c + 1 < c1; c++) {  // the states entering chunks c0+1 .. c1-1
                    GlaChunk ch = {(size_t)b * T + (size_t)c * C, std::min(C, T - c * C), h, K, V, hk, hv, scale};
                    gla_chunk_decay(&w, &ch, nullptr, k, a);
                    gla_chunk_state(gla_state_at(Sbh, w.group, c + 1, nc, X), gla_state_at(Sbh, w.group, c, nc, X), &w,
                                    &ch, v);
                }
                for (int c = c1 - 1; c >= c0; c--) {
                    GlaChunk ch = {(size_t)b * T + (size_t)c * C, std::min(C, T - c * C), h, K, V, hk, hv, scale};
                    gla_chunk_decay(&w, &ch, q, k, a);
                    gla_chunk_scores(&w, &ch, q, k);
                    zero(w.dq_local, (size_t)ch.len * hk);
                    zero(w.dk_local, (size_t)ch.len * hk);
                    gla_chunk_backward_intra(&w, &ch, dv, dout, q, k, v);
                    gla_chunk_backward_inter(&w, &ch, dv, dout, gla_state_at(Sbh, w.group, c, nc, X), v);
                    gla_chunk_backward_state(&w, &ch, dout);
                    gla_chunk_backward_write(&w, &ch, dq, dk, da, q, k);
                }
            }
        }
}

// ----------------------------------------------------------------------------
// GLA per-head output norm and gate, for each head's dv slice:
//     out = rmsnorm(o) * w * silu(og)      (w = g_norm, shared by all heads)
// backward, with n = o * rstd and g = dout * w * silu(og):
//     do = rstd * (g - n * mean(g * n)),  dog = dout * n * w * silu'(og),  dw += dout * n * silu(og)

static void head_norm_gate_forward(float *out, float *rstd, const float *o, const float *og, const float *w, int BT, int H, int dv) {
    parallel_for(BT * H, (size_t)BT * H * dv, [&](long r) {
        size_t off = r * dv;
        float rs = 1.0f / sqrtf(dot(o + off, o + off, dv) / dv + RMS_EPS);
        rstd[r] = rs;
        for (int j = 0; j < dv; j++) out[off + j] = o[off + j] * rs * w[j] * silu(og[off + j]);
    });
}

static void head_norm_gate_backward(float *do_, float *dog, float *dw, const float *dout, const float *o, const float *og,
                             const float *w, const float *rstd, int BT, int H, int dv) {
    #pragma omp parallel for
    for (int r = 0; r < BT * H; r++) {
        size_t off = (size_t)r * dv;
        float rs = rstd[r];
        float mean_gn = sum_of(dv, [&](int j) { return dout[off + j] * w[j] * silu(og[off + j]) * o[off + j] * rs; }) / dv;
        for (int j = 0; j < dv; j++) {
            float n = o[off + j] * rs, s = sigmoidf_(og[off + j]);
            do_[off + j] = rs * (dout[off + j] * w[j] * (og[off + j] * s) - n * mean_gn);
            dog[off + j] = dout[off + j] * n * w[j] * silu_grad_from(og[off + j], s);
        }
    }
    sum_rows_into(dw, BT * H, dv, [&](int r, int j) {
        size_t i = (size_t)r * dv + j;
        return dout[i] * o[i] * rstd[r] * silu(og[i]);
    });
}

// ----------------------------------------------------------------------------
// Mamba2 causal depthwise conv1d over the channels x, B, C, then SiLU:
//     pre_t[c] = bias[c] + sum_{j<W} w[c][j] in_{t-(W-1)+j}[c],   out = silu(pre)
// Inputs before t = 0 come from conv_state ([B, W-1, Cc], the last W-1 inputs
// seen so far) or are zero when it is nullptr; conv_state is then updated.
// `in` rows have stride in_stride (it is a slice of the in_proj output).

// Threads own (sequence, channel block) tasks, and a block's taps are copied
// to wt[j][c] so the inner loops run over contiguous channels (and vectorise).
// The blocks are as wide as CONV_TAPS floats of taps allow (W x width: whole
// rows of mamba2-small), with enough tasks for every thread: a task walks the
// rows of its sequence, and narrow blocks wait on memory at every row (in the
// backward, 160 channels took 1.4x as long as whole rows; 32 channels twice
// as long as 256 in the forward; asking for rows ahead no longer gains). The
// forward asks for its first rows when a task starts (in a decode step the
// other threads wrote them: 2.8 -> 1.8 us a layer). Each task then
// keeps its block's last W-1 inputs in conv_state (in the same task: a second
// loop over the sequences would cost a decode step a barrier).
#define CONV_TAPS 4096
static int conv_block_width(int Cc, int W, int B) {
    int most = std::max(16, CONV_TAPS / W / 16 * 16);
    int nblock = std::max((Cc + most - 1) / most, (omp_get_max_threads() + B - 1) / B);
    return ((Cc + nblock - 1) / nblock + 15) / 16 * 16;  // whole vectors
}
static void conv1d_silu_forward(float *out, float *pre, const float *in, int in_stride, const float *w, const float *bias,
                         float *conv_state, int B, int T, int Cc, int W) {
    int width = conv_block_width(Cc, W, B), nblock = (Cc + width - 1) / width;
    // the work in multiply-adds, W a channel (as the matmuls count theirs), so
    // that a batch-8 decode step's conv (mamba2-small: 8 x 640 channels x 4
    // taps) is split between the threads, not left to thread 0: batch-8
    // mamba2-small generation 8351 against 7710 tokens/s (medians of 8
    // alternating runs, Zen 4, 2 threads)
    parallel_for(B * nblock, (size_t)B * T * Cc * W, [&](long task) {
        int b = task / nblock, c0 = task % nblock * width, nb = std::min(width, Cc - c0);
        float wt[CONV_TAPS], acc[CONV_TAPS];
        for (int t = 0; t < std::min(T, ROWS_AHEAD); t++) {  // the first rows now (in a decode step the other threads wrote them)
            prefetch_stretch(in + ((size_t)b * T + t) * in_stride + c0, nb, false);
            prefetch_stretch(pre + ((size_t)b * T + t) * Cc + c0, nb, true);
            prefetch_stretch(out + ((size_t)b * T + t) * Cc + c0, nb, true);
        }
        for (int j = 0; j < W; j++)
            for (int c = 0; c < nb; c++) wt[j * width + c] = w[(c0 + c) * W + j];
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            for (int c = 0; c < nb; c++) acc[c] = bias[c0 + c];
            for (int j = 0; j < W; j++) {
                int tau = t - (W - 1) + j;
                const float *x = tau >= 0 ? in + ((size_t)b * T + tau) * in_stride + c0
                               : conv_state ? conv_state + ((size_t)b * (W - 1) + (W - 1 + tau)) * Cc + c0 : nullptr;
                if (!x) continue;  // zeros before t = 0
                for (int c = 0; c < nb; c++) acc[c] += wt[j * width + c] * x[c];
            }
            for (int c = 0; c < nb; c++) {
                pre[row * Cc + c0 + c] = acc[c];
                out[row * Cc + c0 + c] = silu(acc[c]);
            }
        }
        if (!conv_state) return;
        for (int i = 0; i < W - 1; i++) {  // keep the block's last W-1 inputs; ascending i reads row T+i >= i, so in place is safe
            int tau = T - (W - 1) + i;
            const float *from = tau >= 0 ? in + ((size_t)b * T + tau) * in_stride + c0 : conv_state + ((size_t)b * (W - 1) + (W - 1 + tau)) * Cc + c0;
            memmove(conv_state + ((size_t)b * (W - 1) + i) * Cc + c0, from, nb * sizeof(float));
        }
    });
}

// backward (zero initial window): g = dout * silu'(pre);  dbias[c] += sum_t g_t[c];
//     dw[c][j] += sum_t g_t[c] in_{t-(W-1)+j}[c];   din_tau[c] = sum_j g_{tau+(W-1)-j}[c] w[c][j]
// din is written, not added to (the conv alone feeds its slice of d in_proj's
// output): row tau's first term comes at t = tau, through the last tap.
// The tasks as in the forward (whole rows stream from memory in long runs;
// no prefetch needed). A task sums its own part of dw and dbias, and the
// parts are added in task order (`ordered`), so each channel's sums run in
// sequence order whatever the thread count.
static void conv1d_silu_backward(float *din, int din_stride, float *dw, float *dbias, const float *dout, const float *pre,
                          const float *in, int in_stride, const float *w, int B, int T, int Cc, int W) {
    int width = conv_block_width(Cc, W, B), nblock = (Cc + width - 1) / width;
    #pragma omp parallel for ordered schedule(dynamic)
    for (int task = 0; task < B * nblock; task++) {
        int b = task / nblock, c0 = task % nblock * width, nb = std::min(width, Cc - c0);
        float wt[CONV_TAPS], dwt[CONV_TAPS] = {0}, db[CONV_TAPS] = {0}, g[CONV_TAPS];
        for (int j = 0; j < W; j++)
            for (int c = 0; c < nb; c++) wt[j * width + c] = w[(c0 + c) * W + j];
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            for (int c = 0; c < nb; c++) {
                g[c] = dout[row * Cc + c0 + c] * silu_grad(pre[row * Cc + c0 + c]);
                db[c] += g[c];
            }
            for (int j = std::max(0, W - 1 - t); j < W; j++) {  // taps on rows before 0 read zeros
                size_t tau = row - (W - 1) + j;
                const float *x = in + tau * in_stride + c0;
                float *dx = din + tau * din_stride + c0;
                bool first = j == W - 1;  // row tau = t: its first term
                for (int c = 0; c < nb; c++) {
                    dwt[j * width + c] += g[c] * x[c];
                    dx[c] = (first ? 0.0f : dx[c]) + g[c] * wt[j * width + c];
                }
            }
        }
        #pragma omp ordered
        for (int c = 0; c < nb; c++) {
            dbias[c0 + c] += db[c];
            for (int j = 0; j < W; j++) dw[(c0 + c) * W + j] += dwt[j * width + c];
        }
    }
}

// ----------------------------------------------------------------------------
// Mamba2 step size: dt = softplus(raw + dt_bias), per token and head.
// d raw = d dt * sigmoid(raw + dt_bias) (written); d dt_bias the same, summed (added).

static void dt_softplus_forward(float *dt, const float *raw, int raw_stride, const float *bias, int BT, int nh) {
    parallel_for(BT, (size_t)BT * PAR_MIN / 64, [&](long r) {  // (a few heads per token: threads from 64 tokens on)
        for (int h = 0; h < nh; h++) dt[r * nh + h] = softplusf(raw[r * raw_stride + h] + bias[h]);
    });
}
static void dt_softplus_backward(float *draw, int draw_stride, float *dbias, const float *ddt, const float *raw, int raw_stride,
                          const float *bias, int BT, int nh) {
    auto g = [&](int r, int h) { return ddt[(size_t)r * nh + h] * sigmoidf_(raw[(size_t)r * raw_stride + h] + bias[h]); };
    #pragma omp parallel for
    for (int r = 0; r < BT; r++)
        for (int h = 0; h < nh; h++) draw[(size_t)r * draw_stride + h] = g(r, h);
    sum_rows_into(dbias, BT, nh, g);
}

// ----------------------------------------------------------------------------
// Mamba2 SSD, recurrent form (the readable truth). xbc rows hold x [E], B [N],
// C [N] (Cc = E + 2N); head h owns channels h*P .. h*P+P-1 of x; B, C are
// shared by all heads (one group). With A_h = -exp(A_log[h]):
//     h_t[p][n] = exp(dt_t A_h) h_{t-1}[p][n] + dt_t x_t[p] B_t[n]
//     y_t[p]    = sum_n C_t[n] h_t[p][n] + D_h x_t[p]
// hs: [B, nh, P, N] state to start from, updated in place; h_all: nullptr or
// [B, nh, T, P, N] to keep every step for the backward pass.

static void ssd_recurrent_forward(float *y, float *hs, float *h_all, const float *xbc, const float *dt, const float *A_log,
                           const float *Dskip, int B, int T, int nh, int P, int N) {
    int E = nh * P, Cc = E + 2 * N;
    parallel_for(B * nh, (size_t)B * T * nh * P * N, [&](long bh) {  // one (sequence, head) each
        int b = bh / nh, h = bh % nh;
        float *hb = hs + ((size_t)b * nh + h) * P * N, A = -expf(A_log[h]);
        for (int t = 0; t < T; t++) {
            size_t row = (size_t)b * T + t;
            const float *x = xbc + row * Cc + h * P, *Bt = xbc + row * Cc + E, *Ct = Bt + N;
            float dtt = dt[row * nh + h], decay = expf(dtt * A);
            float *yt = y + row * E + h * P;
            int ahead = h + 1 < nh ? 2 * P : P;  // (a decode step's x and y were last touched by other threads:
            prefetch_stretch(x, ahead, false);    // ask for this head's lines and the next one's at once)
            prefetch_stretch(yt, ahead, true);
            for (int p = 0; p < P; p++)  // h_t[p] = decay h_{t-1}[p] + dt_t x_t[p] B_t, y_t[p] = <h_t[p], C_t> + D x_t[p]
                yt[p] = decay_add_dot(hb + (size_t)p * N, Bt, Ct, decay, dtt * x[p], N) + Dskip[h] * x[p];
            if (h_all) memcpy(h_all + (((size_t)b * nh + h) * T + t) * P * N, hb, sizeof(float) * P * N);
        }
    });
}

// Backward of the recurrent form from a zero initial state, walking t down:
//     dh     += dy_t C_t^T                        (now the gradient of h_t)
//     dC_t   += h_t^T dy_t,   dx_t += D dy_t + dt_t dh B_t,   dB_t += dt_t dh^T x_t
//     ddt_t  += x_t^T dh B_t                      (through v_t = dt_t x_t)
//     dlda_t += exp(dt_t A) ⟨dh, h_{t-1}⟩        (the log decay dt_t A; see ssd_decay_backward)
//     dh      = exp(dt_t A) dh                    (the gradient of h_{t-1})
// Threads own whole sequences (B and C are shared by the heads).
static void ssd_recurrent_backward(float *dxbc, float *ddt, float *dlda, const float *dy, const float *h_all,
                            const float *xbc, const float *dt, const float *A_log, const float *Dskip,
                            int B, int T, int nh, int P, int N, float *scratch, size_t scratch_per_task) {
    int E = nh * P, Cc = E + 2 * N;
    #pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; b++) {
        float *dh = scratch + omp_get_thread_num() * scratch_per_task;
        for (int h = 0; h < nh; h++) {
            zero(dh, (size_t)P * N);
            float A = -expf(A_log[h]);
            const float *hbh = h_all + ((size_t)b * nh + h) * T * P * N;
            for (int t = T - 1; t >= 0; t--) {
                size_t row = (size_t)b * T + t;
                const float *x = xbc + row * Cc + h * P, *Bt = xbc + row * Cc + E, *Ct = Bt + N;
                const float *dyt = dy + row * E + h * P, *ht = hbh + (size_t)t * P * N;
                const float *hprev = t > 0 ? ht - (size_t)P * N : nullptr;
                float *dx = dxbc + row * Cc + h * P, *dB = dxbc + row * Cc + E, *dC = dB + N;
                float dtt = dt[row * nh + h], decay = expf(dtt * A), sdec = 0, sdt = 0;
                for (int p = 0; p < P; p++) {
                    float *dhp = dh + (size_t)p * N;
                    const float *hp = ht + (size_t)p * N;
                    float sb = 0;
                    for (int n = 0; n < N; n++) {
                        dhp[n] += dyt[p] * Ct[n];
                        dC[n] += hp[n] * dyt[p];
                        dB[n] += dtt * dhp[n] * x[p];
                        sb += dhp[n] * Bt[n];
                        if (hprev) sdec += dhp[n] * hprev[(size_t)p * N + n];
                    }
                    dx[p] += Dskip[h] * dyt[p] + dtt * sb;
                    sdt += x[p] * sb;
                }
                ddt[row * nh + h] += sdt;
                dlda[row * nh + h] += decay * sdec;
                for (size_t i = 0; i < (size_t)P * N; i++) dh[i] *= decay;
            }
        }
    }
}

// ----------------------------------------------------------------------------
// Mamba2 SSD, chunked form (state space duality). In a chunk of CL = ssd_chunk_len(N)
// steps let c_t = dt_t0 A + .. + dt_t A (cumulative log decay, a scalar per
// head), v_s = dt_s x_s and L_ts = e^{c_t - c_s} for s <= t (0 above the
// diagonal: the causal mask with decay). Then, with ⟨x, y⟩ a dot product:
//     y_t   = sum_{s<=t} L_ts ⟨C_t, B_s⟩ v_s + e^{c_t} H_in C_t + D x_t
//     H_out = e^{c_last} H_in + sum_s e^{c_last - c_s} v_s B_s^T
// The first term is a masked (CL x CL) attention-like product: the "dual" of
// the recurrence. hs: [B, nh, nchunk+1, P, N], hs[.., 0, ..] the initial state
// (input), then the state entering each chunk and the final state.
// Names: B (batch) and C (nothing) stay plain; the matrices of a chunk are
// Bmat and Cmat (rows B_t, C_t), CL is the chunk length, L only the mask.


// The scratch of one task in the chunked SSD passes (the forward's tasks are a
// (sequence, chunk) or a (sequence, head), the backward's a whole sequence),
// carved from one thread's slice; ssd_work(nullptr, ..) only counts, like gla_work.
struct SsdWork {
    // both passes
    float *cum, *dts;        // [CL] cumulative log decay c_t; this head's dt
    float *CB;               // [CL, CL] Cmat Bmat^T, shared by the heads
    // forward
    float *M;                // [CL, CL] L ⊙ (Cmat Bmat^T) ⊙ dt_s
    float *Ce, *Xw;          // [CL, N] diag(e^c) Cmat; [CL, P] the decayed, dt-weighted x rows
    // backward
    float *dH_all;           // [nh, P, N] each head's dH
    float *run, *clast;      // [nh] each head's running decay gradient; its c_last in this chunk
    float *decay_to_end, *dcum;        // [CL] e^{c_last - c_t}; this head's dL/dc_t
    float *L, *LCB, *G, *Gsum;         // [CL, CL]: the mask L; L ⊙ CB; L ⊙ (dY X^T) ⊙ dt_s; G over heads
    float *dv, *tN;                    // [CL, P] this head's dv; [CL, N] a temporary
    float *dC;                         // [CL, N] the chunk's dC from the state terms, all heads
    float *tP, *Xw_all, *dYs_all;      // [CL, nh P]: Bmat dH^T; diag(e^{c_last - c} dt) X; diag(e^c) dY (all heads)
    size_t floats;
};
static SsdWork ssd_work(float *ws, int nh, int P, int N) {
    const size_t CL = SSD_CHUNK, E = (size_t)nh * P;  // room for the longest chunk
    SsdWork w;
    size_t off = 0;
    auto take = [&](float **slot, size_t n) { *slot = ws ? ws + off : nullptr; off += n; };
    take(&w.cum, CL); take(&w.dts, CL); take(&w.CB, CL * CL);
    take(&w.M, CL * CL); take(&w.Ce, CL * N); take(&w.Xw, CL * P);
    take(&w.dH_all, E * N); take(&w.run, nh); take(&w.clast, nh);
    take(&w.decay_to_end, CL); take(&w.dcum, CL);
    take(&w.L, CL * CL); take(&w.LCB, CL * CL); take(&w.G, CL * CL); take(&w.Gsum, CL * CL);
    take(&w.dv, CL * P); take(&w.tN, CL * N);
    take(&w.dC, CL * N);
    take(&w.tP, CL * E); take(&w.Xw_all, CL * E); take(&w.dYs_all, CL * E);
    w.floats = off;
    return w;
}

// Head h's dt over a chunk's rows, gathered into dts, and the cumulative log
// decay cum_t = sum_{s<=t} dt_s A; returns c_last. Every pass that needs the
// decays computes them here, in the same order, so they agree bit for bit.
static float ssd_chunk_decay(float *dts, float *cum, const float *dt, size_t row0, int len, int nh, int h, float A) {
    for (int t = 0; t < len; t++) dts[t] = dt[(row0 + t) * nh + h];
    for (int t = 0; t < len; t++) cum[t] = (t ? cum[t - 1] : 0.0f) + dts[t] * A;
    return cum[len - 1];
}

// In matrix form, per chunk and head (X: len x P; Bmat, Cmat: len x N; H: P x N):
//     M     = L ⊙ (Cmat Bmat^T) ⊙ dt_s        (dt_s scales column s)
//     Y     = M X + D X + diag(e^c) Cmat H_in^T
//     H_out = e^{c_last} H_in + (diag(e^{c_last - c} dt) X)^T Bmat
// in two passes, so that the chunks of a sequence run in parallel and share
// Cmat Bmat^T across heads: (1) per (sequence, chunk), the chunk's own part of
// Y and of H_out (what it would be from a zero state); (2) per (sequence,
// head), the short serial walk over the chunks: H_in is complete when the walk
// reaches its chunk, so Y += diag(e^c) Cmat H_in^T, then H_out += e^{c_last}
// H_in. (A third pass for Y, per (sequence, chunk), read every H_in back from
// memory: the two measured 3-4% faster than the three, same bits.)
static void ssd_chunk_forward(float *y, float *hs, const float *xbc, const float *dt, const float *A_log, const float *Dskip,
                              int B, int T, int nh, int P, int N, float *scratch, size_t scratch_per_task) {
    const int CL = ssd_chunk_len(N), nc = n_chunks(T, CL);
    int E = nh * P, Cc = E + 2 * N;
    auto state = [&](int b, int h, int c) { return hs + (((size_t)b * nh + h) * (nc + 1) + c) * P * N; };
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int c = 0; c < nc; c++) {
            SsdWork w = ssd_work(scratch + omp_get_thread_num() * scratch_per_task, nh, P, N);
            size_t row0 = (size_t)b * T + (size_t)c * CL;
            int len = std::min(CL, T - c * CL);
            const float *base = xbc + row0 * Cc;
            RowsC Bmat = rows_c(base + E, len, N, Cc), Cmat = rows_c(base + E + N, len, N, Cc);
            MapM CB(w.CB, len, len), M(w.M, len, len), Xw(w.Xw, len, P);
            CB.noalias() = Cmat * Bmat.transpose();
            for (int h = 0; h < nh; h++) {
                float *cum = w.cum, *dts = w.dts;
                float clast = ssd_chunk_decay(dts, cum, dt, row0, len, nh, h, -expf(A_log[h]));
                RowsC X = rows_c(base + h * P, len, P, Cc);
                Rows Y = rows(y + row0 * E + h * P, len, P, E);
                for (int t = 0; t < len; t++) {
                    float *Mt = &M(t, 0);
                    const float *CBt = &CB(t, 0);
                    for (int s = 0; s <= t; s++) Mt[s] = CBt[s] * exp_fast(cum[t] - cum[s]) * dts[s];
                    for (int s = t + 1; s < len; s++) Mt[s] = 0.0f;
                }
                // Y starts as the skip term D X and the product adds onto it: a plain
                // `Y = M X` would first zero Y (Eigen's `=` products do), one more
                // pass over these strided rows
                for (int t = 0; t < len; t++) {
                    const float *Xt = X.row(t).data();
                    float *Yt = Y.row(t).data(), *Xwt = &Xw(t, 0), f = exp_fast(clast - cum[t]) * dts[t];
                    #pragma omp simd
                    for (int j = 0; j < P; j++) {
                        Yt[j] = Dskip[h] * Xt[j];
                        Xwt[j] = Xt[j] * f;
                    }
                }
                Y.noalias() += M * X;
                MapM(state(b, h, c + 1), P, N).noalias() = Xw.transpose() * Bmat;
            }
        }
    #pragma omp parallel for collapse(2) schedule(dynamic)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < nh; h++) {
            SsdWork w = ssd_work(scratch + omp_get_thread_num() * scratch_per_task, nh, P, N);
            MapM Ce(w.Ce, CL, N);
            for (int c = 0; c < nc; c++) {
                size_t row0 = (size_t)b * T + (size_t)c * CL;
                int len = std::min(CL, T - c * CL);
                float clast = ssd_chunk_decay(w.dts, w.cum, dt, row0, len, nh, h, -expf(A_log[h]));
                MapCM Hin(state(b, h, c), P, N);
                RowsC Cmat = rows_c(xbc + row0 * Cc + E + N, len, N, Cc);
                Rows Y = rows(y + row0 * E + h * P, len, P, E);
                for (int t = 0; t < len; t++) {
                    float e = exp_fast(w.cum[t]), *Cet = &Ce(t, 0);
                    const float *Ct = Cmat.row(t).data();
                    #pragma omp simd
                    for (int n = 0; n < N; n++) Cet[n] = e * Ct[n];
                }
                Y.noalias() += Ce.topRows(len) * Hin.transpose();
                MapM(state(b, h, c + 1), P, N) += exp_fast(clast) * Hin;
            }
        }
}

// Backward of the chunked form, chunks in reverse carrying dH (gradient of the
// state leaving the chunk). With L_ts = e^{c_t - c_s} (s <= t), v_s = dt_s x_s,
// LCB = L ⊙ (Cmat Bmat^T) and G_ts = L_ts dt_s ⟨dy_t, x_s⟩, per chunk and head:
//     dv    = LCB^T dY + diag(e^{c_last - c}) Bmat dH^T
//     dX   += diag(dt) dv + D dY,     ddt_s += ⟨x_s, dv_s⟩
//     dC   += G Bmat + diag(e^c) dY H_in
//     dB   += G^T Cmat + diag(e^{c_last - c} dt) X dH
//     dH_in = e^{c_last} dH + (diag(e^c) dY)^T Cmat
// As in GLA, the decay enters only through differences of the global cumulative
// sum, so dL/dc_t = ⟨C_t, dC_t⟩ - ⟨B_t, dB_t⟩ (this head's parts of dC, dB),
// and dlda_t, the gradient of the log decay dt_t A, is its reverse running sum.
// The G parts of those inner products are row and column sums of G ⊙ CB; the
// diagonal adds the same G_tt CB_tt to both, so it is left out (in float32 the
// two would not cancel exactly).
// B and C are shared by all heads, so the products with Bmat and Cmat run once
// per chunk over all heads side by side: Bmat dH^T and X dH over the stacked dH
// of every head, G Bmat over the sum of the heads' G, dY^T Cmat over all heads'
// dY. Threads own whole sequences, so the shared B, C gradients need no locks.
static void ssd_chunk_backward(float *dxbc, float *ddt, float *dlda, const float *dy, const float *hs,
                               const float *xbc, const float *dt, const float *A_log, const float *Dskip,
                               int B, int T, int nh, int P, int N, float *scratch, size_t scratch_per_task) {
    const int CL = ssd_chunk_len(N), nc = n_chunks(T, CL);
    int E = nh * P, Cc = E + 2 * N;
    #pragma omp parallel for schedule(dynamic)
    for (int b = 0; b < B; b++) {
        SsdWork w = ssd_work(scratch + omp_get_thread_num() * scratch_per_task, nh, P, N);
        float *cum = w.cum, *ec = w.decay_to_end, *dts = w.dts, *dcum = w.dcum;
        zero(w.dH_all, (size_t)E * N);
        zero(w.run, nh);
        MapM dH_all(w.dH_all, E, N);
        for (int c = nc - 1; c >= 0; c--) {
            size_t row0 = (size_t)b * T + (size_t)c * CL;
            int len = std::min(CL, T - c * CL);
            const float *base = xbc + row0 * Cc;
            RowsC Bmat = rows_c(base + E, len, N, Cc), Cmat = rows_c(base + E + N, len, N, Cc);
            MapM CB(w.CB, len, len), L(w.L, len, len), LCB(w.LCB, len, len), G(w.G, len, len), Gsum(w.Gsum, len, len);
            MapM dv(w.dv, len, P), tN(w.tN, len, N), dC(w.dC, len, N), tP(w.tP, len, E), Xw(w.Xw_all, len, E), dYs(w.dYs_all, len, E);
            CB.noalias() = Cmat * Bmat.transpose();
            tP.noalias() = Bmat * dH_all.transpose();  // every head's Bmat dH^T, before dH moves back a chunk
            Gsum.setZero();
            dC.setZero();
            for (int h = 0; h < nh; h++) {
                float A = -expf(A_log[h]);
                RowsC X = rows_c(base + h * P, len, P, Cc), dY = rows_c(dy + row0 * E + h * P, len, P, E);
                Rows dX = rows(dxbc + row0 * Cc + h * P, len, P, Cc);
                MapCM Hin(hs + (((size_t)b * nh + h) * (nc + 1) + c) * P * N, P, N);
                float clast = w.clast[h] = ssd_chunk_decay(dts, cum, dt, row0, len, nh, h, A);
                for (int t = 0; t < len; t++) ec[t] = exp_fast(clast - cum[t]);
                for (int t = 0; t < len; t++) {
                    float *Lt = &L(t, 0);
                    for (int s = 0; s <= t; s++) Lt[s] = exp_fast(cum[t] - cum[s]);
                    for (int s = t + 1; s < len; s++) Lt[s] = 0.0f;
                }
                // dv, then dX and ddt
                LCB.noalias() = L.cwiseProduct(CB);
                dv.noalias() = LCB.transpose() * dY;
                for (int s = 0; s < len; s++) {
                    float *dvs = &dv(s, 0), *dXs = &dX(s, 0);
                    const float *tPs = &tP(s, h * P), *dYs = dY.row(s).data();
                    #pragma omp simd
                    for (int j = 0; j < P; j++) {
                        dvs[j] += ec[s] * tPs[j];
                        dXs[j] += dts[s] * dvs[j] + Dskip[h] * dYs[j];
                    }
                    ddt[(row0 + s) * nh + h] += dot(X.row(s).data(), dvs, P);
                }
                // G, summed over heads for dC and dB; its part of dL/dc
                G.noalias() = dY * X.transpose();
                for (int t = 0; t < len; t++) dcum[t] = 0;
                for (int t = 0; t < len; t++) {
                    float *Gt = &G(t, 0);
                    const float *Lt = &L(t, 0), *CBt = &CB(t, 0);
                    for (int s = 0; s < len; s++) Gt[s] *= Lt[s] * dts[s];
                    dcum[t] += sum_of(t, [&](int s) {  // s < t: the diagonal is left out
                        float g = Gt[s] * CBt[s];
                        dcum[s] -= g;
                        return g;
                    });
                }
                Gsum += G;
                // the state terms: dC gets diag(e^c) dY H_in; dB's part waits for X dH below
                tN.noalias() = dY * Hin;
                for (int t = 0; t < len; t++) {
                    float e = exp_fast(cum[t]), f = ec[t] * dts[t];
                    const float *Xt = X.row(t).data(), *dYt = dY.row(t).data(), *tNt = &tN(t, 0);
                    float *dCt = &dC(t, 0), *Xwt = &Xw(t, h * P), *dYst = &dYs(t, h * P);
                    #pragma omp simd
                    for (int n = 0; n < N; n++) dCt[n] += e * tNt[n];
                    #pragma omp simd
                    for (int j = 0; j < P; j++) {
                        Xwt[j] = f * Xt[j];
                        dYst[j] = e * dYt[j];
                    }
                    dcum[t] += e * dot(Cmat.row(t).data(), tNt, N) - f * dot(Xt, &tP(t, h * P), P);
                }
                for (int t = len - 1; t >= 0; t--) {
                    w.run[h] += dcum[t];
                    dlda[(row0 + t) * nh + h] += w.run[h];
                }
            }
            // the heads together: dC, dB, then dH for the previous chunk
            Rows dBrows = rows(dxbc + row0 * Cc + E, len, N, Cc), dCrows = rows(dxbc + row0 * Cc + E + N, len, N, Cc);
            dCrows += dC;
            dCrows.noalias() += Gsum * Bmat;
            dBrows.noalias() += Gsum.transpose() * Cmat;
            dBrows.noalias() += Xw * dH_all;
            for (int h = 0; h < nh; h++) MapM(w.dH_all + (size_t)h * P * N, P, N) *= exp_fast(w.clast[h]);
            dH_all.noalias() += dYs.transpose() * Cmat;
        }
    }
}

// The rest of the SSD backward, shared by both forms. The log decay is
// dt_t A_h with A_h = -exp(A_log[h]), so from its gradient dlda:
//     ddt_t += A_h dlda_t,   dA_log[h] += sum_t dt_t A_h dlda_t
// and the skip y += D x gives dD[h] += sum_t ⟨dy_t, x_t⟩ over the head's channels.
// Threads own groups of HEAD_GROUP heads and walk the rows once for the whole
// group (a row's heads lie side by side; prefetch_stretch: 1.4% -> 0.8-1.0% of
// a mamba2-small step); each head's sums still run over the rows in order.
#define HEAD_GROUP 4
static void ssd_decay_backward(float *ddt, float *dA_log, float *dD, const float *dlda, const float *dy, const float *xbc,
                        const float *dt, const float *A_log, int BT, int nh, int P, int N) {
    int E = nh * P, Cc = E + 2 * N;
    #pragma omp parallel for schedule(dynamic)
    for (int h0 = 0; h0 < nh; h0 += HEAD_GROUP) {
        int ng = std::min(HEAD_GROUP, nh - h0);
        float A[HEAD_GROUP], sa[HEAD_GROUP] = {0}, sd[HEAD_GROUP] = {0};
        for (int g = 0; g < ng; g++) A[g] = -expf(A_log[h0 + g]);
        for (int r = 0; r < BT; r++) {
            if (r + ROWS_AHEAD < BT) {
                prefetch_stretch(dy + (size_t)(r + ROWS_AHEAD) * E + h0 * P, ng * P, false);
                prefetch_stretch(xbc + (size_t)(r + ROWS_AHEAD) * Cc + h0 * P, ng * P, false);
            }
            for (int g = 0; g < ng; g++) {
                size_t i = (size_t)r * nh + h0 + g;
                ddt[i] += A[g] * dlda[i];
                sa[g] += dt[i] * A[g] * dlda[i];
                sd[g] += dot(dy + (size_t)r * E + (h0 + g) * P, xbc + (size_t)r * Cc + (h0 + g) * P, P);
            }
        }
        for (int g = 0; g < ng; g++) {
            dA_log[h0 + g] += sa[g];
            dD[h0 + g] += sd[g];
        }
    }
}

// ----------------------------------------------------------------------------
// Mamba2 gated rmsnorm over all E channels: out = rmsnorm(y * silu(z)) * w
// backward: with s = sigmoid(z), n = y z s rstd (the normalised value) and
// mean_gn = mean over the row of dout w n:  dg = rstd (dout w - n mean_gn),
// dy = dg z s,  dz = dg y silu'(z),  dw += column sums of dout n.
// z rows have stride z_stride (slice of in_proj out; prefetch_stretch: forward
// -21%, backward -13-18% alone, mamba2-small shapes).
// The backward's tasks are blocks of GNORM_ROWS rows. A task computes each
// sigmoid of a row once into a row of `work` (the sigmoids were two thirds of
// the op's time) and sums its rows' part of dw in a second row there; the
// parts are added in task order (`ordered`), so dw is the same whatever the
// thread count. work: 2 E floats a task ([BT, E] does when BT >= 2; the
// model passes a [BT, widest] row buffer, wider than 2 E). Keeping the
// normalised values of all rows in `work` for a second pass of column sums
// wrote them and read them and dout back (8 MB each in a mamba2-small layer):
// the one pass is 17-25% faster (2 threads, Zen 4).
#define GNORM_ROWS 64

static void gated_rmsnorm_forward(float *out, float *rstd, const float *y, const float *z, int z_stride, const float *w, int BT, int E) {
    parallel_for(BT, (size_t)BT * E, [&](long r) {
        const float *yr = y + r * E, *zr = z + r * z_stride;
        float *o = out + r * E;
        if (r + ROWS_AHEAD < BT) prefetch_stretch(zr + (size_t)ROWS_AHEAD * z_stride, E, false);
        for (int j = 0; j < E; j++) o[j] = yr[j] * silu(zr[j]);
        float rs = 1.0f / sqrtf(dot(o, o, E) / E + RMS_EPS);
        rstd[r] = rs;
        for (int j = 0; j < E; j++) o[j] = o[j] * rs * w[j];
    });
}

static void gated_rmsnorm_backward(float *dy, float *dz, int dz_stride, float *dw, const float *dout, const float *y, const float *z,
                            int z_stride, const float *w, const float *rstd, int BT, int E, float *work) {
    int ntask = (BT + GNORM_ROWS - 1) / GNORM_ROWS;
    #pragma omp parallel for ordered schedule(dynamic)
    for (int task = 0; task < ntask; task++) {
        float *sr = work + (size_t)2 * task * E, *dw_part = sr + E;
        zero(dw_part, E);
        int r1 = std::min(BT, (task + 1) * GNORM_ROWS);
        for (int r = task * GNORM_ROWS; r < r1; r++) {
            const float *yr = y + (size_t)r * E, *zr = z + (size_t)r * z_stride, *d = dout + (size_t)r * E;
            float rs = rstd[r];
            if (r + ROWS_AHEAD < BT) {
                prefetch_stretch(zr + (size_t)ROWS_AHEAD * z_stride, E, false);
                prefetch_stretch(dz + (size_t)(r + ROWS_AHEAD) * dz_stride, E, true);
            }
            #pragma omp simd
            for (int j = 0; j < E; j++) sr[j] = sigmoidf_(zr[j]);
            float mean_gn = sum_of(E, [&](int j) { return d[j] * w[j] * yr[j] * (zr[j] * sr[j]) * rs; }) / E;
            float *dyr = dy + (size_t)r * E, *dzr = dz + (size_t)r * dz_stride;
            #pragma omp simd
            for (int j = 0; j < E; j++) {
                float s = sr[j], sz = zr[j] * s, n = yr[j] * sz * rs;
                float dg = rs * (d[j] * w[j] - n * mean_gn);
                dyr[j] = dg * sz;
                dzr[j] = dg * yr[j] * silu_grad_from(zr[j], s);
                dw_part[j] += d[j] * n;
            }
        }
        #pragma omp ordered
        for (int j = 0; j < E; j++) dw[j] += dw_part[j];
    }
}

// ----------------------------------------------------------------------------
// cross-entropy over positions whose target is not -1:
//     loss = mean over those rows of (logsumexp(logits) - logits[target])
// backward: dlogits += dloss * (softmax(logits) - onehot(target))
// A row's sum of exponentials is in float, as in the backward (each term is at
// most 1, so nothing is lost); in double, one scalar exp at a time, the forward
// took 1.7% of the main job's step.

static float crossentropy_forward(float *losses, int *n_valid, const float *logits, const int *targets, int BT, int V) {
    #pragma omp parallel for
    for (int r = 0; r < BT; r++) {
        losses[r] = 0;
        if (targets[r] < 0) continue;
        const float *l = logits + (size_t)r * V;
        float mx = l[0];
        for (int i = 1; i < V; i++) mx = std::max(mx, l[i]);
        float s = sum_of(V, [&](int i) { return exp_fast(l[i] - mx); });
        losses[r] = logf(s) + mx - l[targets[r]];
    }
    double sum = 0;  // serial: the same sum every run
    int count = 0;
    for (int r = 0; r < BT; r++)
        if (targets[r] >= 0) { sum += losses[r]; count++; }
    *n_valid = count;
    return count ? (float)(sum / count) : 0.0f;
}

static void crossentropy_backward(float *dlogits, const float *logits, const int *targets, int BT, int V, float dloss) {
    #pragma omp parallel for
    for (int r = 0; r < BT; r++) {
        if (targets[r] < 0) continue;
        const float *l = logits + (size_t)r * V;
        float *d = dlogits + (size_t)r * V;
        float mx = l[0];
        for (int i = 1; i < V; i++) mx = std::max(mx, l[i]);
        float s = 0;
        for (int i = 0; i < V; i++) s += exp_fast(l[i] - mx);
        for (int i = 0; i < V; i++) d[i] += dloss * exp_fast(l[i] - mx) / s;
        d[targets[r]] -= dloss;
    }
}

// ----------------------------------------------------------------------------
// AdamW (decoupled weight decay), one tensor at a time, g = grad * grad_scale:
//     m = b1 m + (1-b1) g,   v = b2 v + (1-b2) g^2
//     p -= lr * ( m/(1-b1^t) / (sqrt(v/(1-b2^t)) + eps) + wd p )

static void adamw_update(float *p, const float *grad, float *m, float *v, size_t n, float lr, float grad_scale, float wd,
                  int step, const AdamWConfig *o) {
    // the constants in locals: the compiler cannot know that p, m, v do not
    // overlap *o, and would reload them every element instead of vectorising
    const float b1 = o->beta1, b2 = o->beta2, eps = o->eps;
    const float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
    // a norm or bias vector is done before a parallel region would even start
    #pragma omp parallel for if (n >= 65536)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * grad_scale;
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        p[i] -= lr * ((m[i] / c1) / (sqrtf(v[i] / c2) + eps) + wd * p[i]);
    }
}

// ----------------------------------------------------------------------------
// the CPU op table (model.h declares it; same order as above)

const Ops ops = STATEX_OP_TABLE;

// ----------------------------------------------------------------------------
// the model: memory, initialisation, and the passes of model.h on the CPU ops

void model_init(Model *m, const Config *c, float *params) {
    model_init_common(m, c, DEVICE_CPU);
    m->params = params ? params : xcalloc_floats(m->num_params);
    m->grads = xcalloc_floats(m->num_params);
    param_layout(c, m->params, &m->w);
    param_layout(c, m->grads, &m->g);
    m->n_threads = omp_get_max_threads();
}

// the scans' scratch per thread: the largest GlaWork or SsdWork over the layers
size_t scan_work_floats(const Config *c) {
    size_t most = 0;
    for (int l = 0; l < c->n_layer; l++) {
        size_t need = c->family == FAMILY_GLA
                          ? gla_work(nullptr, c->key_dim / c->n_head[l], c->value_dim / c->n_head[l]).floats
                          : ssd_work(nullptr, m2_nheads(c), c->headdim, c->d_state[l]).floats;
        most = std::max(most, need);
    }
    return most;
}

void model_alloc_acts(Model *m, int B, int T, bool keep_steps) {
    free(m->acts_mem);
    size_t work = scan_work_floats(&m->config);
    size_t n = acts_layout(&m->config, B, T, m->n_threads, work, keep_steps, nullptr, nullptr);
    m->acts_mem = xcalloc_floats(n);
    acts_layout(&m->config, B, T, m->n_threads, work, keep_steps, m->acts_mem, &m->acts);
    m->B = B;
    m->T = T;
    m->keep_steps = keep_steps;
}

void model_free(Model *m) {
    free(m->params);
    free(m->grads);
    free(m->acts_mem);
    free(m->adam_m);
    free(m->adam_v);
    m->params = m->grads = m->acts_mem = m->adam_m = m->adam_v = nullptr;
}

// Fresh token-mixing weights for layer l, as in a new model (also StateX's
// `reinit`): projections N(0, 0.02), the output projection scaled down by
// sqrt(2 L) (GPT-2's rule for residual branches), norms 1, biases 0;
// Mamba2 as in mamba_ssm: A = U[1, 16], dt log-uniform in [1e-3, 0.1],
// D = 1, conv weights and bias U(-1/sqrt(W), 1/sqrt(W)) (PyTorch's default).
void init_layer_mixer(Model *m, int l, Rng *rng) {
    const Config *c = &m->config;
    LayerWeights *lw = &m->w.layer[l];
    float std_in = 0.02f, std_out = 0.02f / sqrtf(2.0f * c->n_layer);
    auto normal = [&](float *p, size_t n, float s) { for (size_t i = 0; i < n; i++) p[i] = s * rng_normal(rng); };
    auto fill = [&](float *p, size_t n, float v) { for (size_t i = 0; i < n; i++) p[i] = v; };
    int D = c->d_model;
    if (c->family == FAMILY_GLA) {
        int K = c->key_dim, V = c->value_dim, r = c->gate_rank, dv = V / c->n_head[l];
        fill(lw->attn_norm, D, 1.0f);
        normal(lw->q_proj, (size_t)K * D, std_in);
        normal(lw->k_proj, (size_t)K * D, std_in);
        normal(lw->v_proj, (size_t)V * D, std_in);
        normal(lw->g_proj, (size_t)V * D, std_in);
        normal(lw->gk_proj0, (size_t)r * D, std_in);
        normal(lw->gk_proj1, (size_t)K * r, std_in);
        fill(lw->gk_bias, K, 0.0f);
        fill(lw->g_norm, dv, 1.0f);
        normal(lw->o_proj, (size_t)D * V, std_out);
    } else {
        int E = c->d_inner, nh = m2_nheads(c), Cc = m2_conv_dim(c, l), W = c->d_conv;
        fill(lw->norm, D, 1.0f);
        normal(lw->in_proj, (size_t)m2_in_dim(c, l) * D, std_in);
        float bound = 1.0f / sqrtf((float)W);
        for (size_t i = 0; i < (size_t)Cc * W; i++) lw->conv_w[i] = bound * (2 * rng_uniform(rng) - 1);
        for (int i = 0; i < Cc; i++) lw->conv_b[i] = bound * (2 * rng_uniform(rng) - 1);
        for (int h = 0; h < nh; h++) {
            float dt = expf(logf(1e-3f) + rng_uniform(rng) * (logf(0.1f) - logf(1e-3f)));
            lw->dt_bias[h] = dt + logf(-expm1f(-dt));  // softplus^-1(dt)
            lw->A_log[h] = logf(1.0f + 15.0f * rng_uniform(rng));
            lw->D[h] = 1.0f;
        }
        fill(lw->gnorm, E, 1.0f);
        normal(lw->out_proj, (size_t)D * E, std_out);
    }
}

void model_random_init(Model *m, uint64_t seed) {
    const Config *c = &m->config;
    Rng rng = {seed};
    int D = c->d_model, F = c->mlp_hidden;
    float std_out = 0.02f / sqrtf(2.0f * c->n_layer);
    auto normal = [&](float *p, size_t n, float s) { for (size_t i = 0; i < n; i++) p[i] = s * rng_normal(&rng); };
    normal(m->w.embed, (size_t)c->vocab_size * D, 0.02f);
    for (int l = 0; l < c->n_layer; l++) {
        init_layer_mixer(m, l, &rng);
        if (c->family == FAMILY_GLA) {
            LayerWeights *lw = &m->w.layer[l];
            for (int j = 0; j < D; j++) lw->mlp_norm[j] = 1.0f;
            normal(lw->gate_proj, (size_t)F * D, 0.02f);
            normal(lw->up_proj, (size_t)F * D, 0.02f);
            normal(lw->down_proj, (size_t)D * F, std_out);
        }
    }
    for (int j = 0; j < D; j++) m->w.norm_w[j] = 1.0f;
    if (!c->tied) normal(m->w.lm_head, (size_t)c->vocab_size * D, 0.02f);
}

float *random_params(const Config *c, uint64_t seed) {
    Model m;
    model_init(&m, c, nullptr);
    model_random_init(&m, seed);
    float *p = m.params;
    m.params = nullptr;
    model_free(&m);
    return p;
}

// recurrent state for generation
size_t state_floats(const Config *c, int l, int B) {
    if (c->family == FAMILY_GLA) return (size_t)B * c->key_dim * c->value_dim / c->n_head[l];
    return (size_t)B * (c->d_inner * (size_t)c->d_state[l] + (size_t)(c->d_conv - 1) * m2_conv_dim(c, l));
}
void state_alloc(const Config *c, int B, RecState *s) {
    size_t total = 0;
    for (int l = 0; l < c->n_layer; l++) total += state_floats(c, l, B);
    s->B = B;
    s->mem = xcalloc_floats(total);
    float *p = s->mem;
    for (int l = 0; l < c->n_layer; l++) { s->layer[l] = p; p += state_floats(c, l, B); }
}
void state_zero(const Config *c, RecState *s) {
    for (int l = 0; l < c->n_layer; l++) zero(s->layer[l], state_floats(c, l, s->B));
}
void state_free(RecState *s) { free(s->mem); s->mem = nullptr; }

// The model passes are written once, in model.h, for both backends; here
// they run on the CPU ops. The tokens are host arrays already.
bool forward_in_one_region(const Model *m, int B, int T, const RecState *state) {
    // A decode step (one token per sequence, a few sequences) runs all its ops
    // in one parallel region: each op's parallel_for splits its loop among the
    // region's threads and ends at a spinning barrier, so the step pays for
    // starting threads once rather than once per op (see parallel_for). Every
    // op of the recurrent form's logits pass goes through parallel_for; the
    // matmuls stay on their matrix-vector path (B <= MATVEC_ROWS). Not with
    // more threads than processors: a spinning barrier then waits for threads
    // the system has put aside (4 threads on 2 cores: 40 tokens/s, not 4000).
    static const int processors = omp_get_num_procs();  // (asked once: each call is a system call)
    int threads = omp_get_max_threads();
    return T == 1 && B <= MATVEC_ROWS && state && m->mixer_form == MIX_RECURRENT && threads > 1 && threads <= processors;
}

void model_forward(Model *m, const int *inputs, const int *targets, int B, int T, RecState *state) {
    std::string e = forward_problem(m, B, T, state);
    if (!e.empty()) die("model_forward: %s", e.c_str());
    if (forward_in_one_region(m, B, T, state)) {
        #pragma omp parallel
        model_logits_pass(&ops, m, inputs, B, T, state);
    } else {
        model_logits_pass(&ops, m, inputs, B, T, state);
    }
    model_loss_pass(&ops, m, targets, B, T);
    m->inputs = inputs;
    m->targets = targets;
}

void model_zero_grad(Model *m) { zero(m->grads, m->num_params); }

// sqrt of the sum of squares of the trainable gradients, summed in a fixed
// order: each tensor in blocks of 4096 (the blocks in parallel, all tensors'
// blocks in one parallel region), then the blocks in sequence
float model_grad_norm(Model *m) {
    struct Block { const float *g; size_t n; };
    std::vector<Block> blocks;
    for (size_t t = 0; t < m->tensors.size(); t++) {
        if (m->lr_scale[t] == 0.0f) continue;
        const float *g = m->grads + m->tensors[t].offset;
        size_t n = m->tensors[t].size();
        for (size_t i = 0; i < n; i += 4096) blocks.push_back({g + i, std::min<size_t>(4096, n - i)});
    }
    std::vector<double> part(blocks.size());
    #pragma omp parallel for schedule(dynamic, 16)
    for (size_t b = 0; b < blocks.size(); b++) {
        double s = 0;
        for (size_t i = 0; i < blocks[b].n; i++) s += (double)blocks[b].g[i] * blocks[b].g[i];
        part[b] = s;
    }
    double total = 0;
    for (size_t b = 0; b < blocks.size(); b++) total += part[b];
    return (float)sqrt(total);
}

void model_update(Model *m, float lr, float grad_scale, int step, const AdamWConfig *opt) {
    if (!m->adam_m) {
        m->adam_m = xcalloc_floats(m->num_params);
        m->adam_v = xcalloc_floats(m->num_params);
    }
    model_update_pass(&ops, m, lr, grad_scale, step, opt);
}

void model_backward(Model *m) {
    if (!m->targets) die("model_backward: the last forward had no targets");
    if (m->mixer_form == MIX_RECURRENT && !m->keep_steps) die("model_backward: the recurrent form needs keep_steps");
    model_backward_pass(&ops, m, m->inputs, m->targets);
}

// ----------------------------------------------------------------------------
// StateX: expand the recurrent state of a trained model (host side, on the
// flat parameter buffer; both devices read the result from the model file).
// Chosen layers: l = 0, k, 2k, ... (every k-th). Embeddings and MLPs are kept.
//
// GLA (state K*V/H -> K*V per chosen layer): the layer's heads become one.
//   reinit: q, k, v, g, gk0, gk1 (+bias), o drawn afresh as in a new model;
//           attn_norm and g_norm become ones (g_norm grows from V/H to V).
//   merge:  every weight kept; g_norm becomes the old one tiled H times.
// Mamba2 (state N -> e*N per chosen layer): the B and C blocks (in_proj rows,
// conv weights and conv bias) grow from N to e*N rows; z, x, dt rows and the
// x conv channels are kept.
//   reinit: all e*N rows of B and C drawn afresh, dt_bias and A_log re-drawn,
//           mixer.norm ones; D, the block's norm and out_proj kept.
//   copy:   the old block repeated e times.
//   zero:   the old block, then zeros. The function is unchanged, but the new
//           rows never learn: a new state row n only reaches the output through
//           C[n] (zero) and only gets gradient through C[n] too.
//   grow:   ours. New C rows (in_proj, conv, bias) drawn afresh; new B in_proj
//           rows and conv bias zero, new B conv weights drawn afresh. Then the
//           new B values are silu(0) = 0, so the new state rows stay 0 and the
//           function is unchanged, like zero; but dB_new = sum G C_new != 0, and
//           it reaches the new B in_proj rows through the (non-zero) conv
//           weights: every new row learns from the first step (the same trick
//           as LoRA's one-zero-factor start).

static void copy_rows(float *dst, const float *src, size_t rows, size_t cols) { memcpy(dst, src, rows * cols * sizeof(float)); }

std::string expand_model(const Config *in, const float *params_in, const std::string &mode, int every, int factor,
                         uint64_t seed, Config *out, float **params_out) {
    bool gla = in->family == FAMILY_GLA;
    bool ok_mode = gla ? (mode == "reinit" || mode == "merge")
                       : (mode == "reinit" || mode == "copy" || mode == "zero" || mode == "grow");
    if (!ok_mode)
        return strf("expansion mode '%s' is not one of %s's (%s)", mode.c_str(), family_name(in->family),
                    gla ? "reinit, merge" : "reinit, copy, zero, grow");
    if (every < 1 || every > in->n_layer) return strf("--expand-every %d must be between 1 and n_layer = %d", every, in->n_layer);
    if (!gla && factor < 2) return strf("--expand-factor %d must be at least 2", factor);
    *out = *in;
    for (int l = 0; l < in->n_layer; l += every) {
        if (gla) out->n_head[l] = 1;
        else if ((int64_t)in->d_state[l] * factor > (1 << 14)) return strf("layer %d: state %d x %d is too large", l, in->d_state[l], factor);
        else out->d_state[l] = in->d_state[l] * factor;
    }
    std::string e = config_problem(out);
    if (!e.empty()) return e;
    // start from a fresh model of the new shape, then copy every tensor whose
    // name and shape are unchanged: that is everything outside chosen layers
    Model mi, mo;
    model_init(&mi, in, (float *)params_in);
    model_init(&mo, out, nullptr);
    Rng rng = {seed};
    for (const ParamTensor &t : mo.tensors)
        for (const ParamTensor &s : mi.tensors)
            if (s.name == t.name && s.rows == t.rows && s.cols == t.cols) copy_rows(mo.params + t.offset, mi.params + s.offset, 1, t.size());
    for (int l = 0; l < in->n_layer; l += every) {
        LayerWeights *I = &mi.w.layer[l], *O = &mo.w.layer[l];
        if (gla) {
            int V = in->value_dim, H = in->n_head[l], dv = V / H;
            if (mode == "reinit") init_layer_mixer(&mo, l, &rng);
            else for (int h = 0; h < H; h++) copy_rows(O->g_norm + h * dv, I->g_norm, 1, dv);
            continue;
        }
        int D = in->d_model, E = in->d_inner, N = in->d_state[l], eN = out->d_state[l], nh = m2_nheads(in), W = in->d_conv;
        if (mode == "reinit") init_layer_mixer(&mo, l, &rng);  // all afresh; below we put back what is kept
        // kept in every mode: the z, x and dt rows of in_proj, the x conv channels
        copy_rows(O->in_proj, I->in_proj, 2 * E, D);
        copy_rows(O->in_proj + (size_t)(2 * E + 2 * eN) * D, I->in_proj + (size_t)(2 * E + 2 * N) * D, nh, D);
        copy_rows(O->conv_w, I->conv_w, E, W);
        copy_rows(O->conv_b, I->conv_b, 1, E);
        if (mode == "reinit") {  // and D, the block's norm and out_proj
            copy_rows(O->norm, I->norm, 1, D);
            copy_rows(O->D, I->D, 1, nh);
            copy_rows(O->out_proj, I->out_proj, D, E);
            continue;
        }
        // copy, zero, grow: block b = 0 (B) or 1 (C); new rows after the old N
        for (int b = 0; b < 2; b++) {
            float *oin = O->in_proj + (size_t)(2 * E + b * eN) * D, *ow = O->conv_w + (size_t)(E + b * eN) * W, *ob = O->conv_b + E + b * eN;
            const float *iin = I->in_proj + (size_t)(2 * E + b * N) * D, *iw = I->conv_w + (size_t)(E + b * N) * W, *ib = I->conv_b + E + b * N;
            for (int r = 0; r < factor; r++) {  // r = 0: the old block itself
                float *pin = oin + (size_t)r * N * D, *pw = ow + (size_t)r * N * W, *pb = ob + r * N;
                if (r == 0 || mode == "copy") {
                    copy_rows(pin, iin, N, D); copy_rows(pw, iw, N, W); copy_rows(pb, ib, 1, N);
                    continue;
                }
                zero(pin, (size_t)N * D); zero(pw, (size_t)N * W); zero(pb, N);
                if (mode == "grow") {
                    float bound = 1.0f / sqrtf((float)W);
                    for (size_t i = 0; i < (size_t)N * W; i++) pw[i] = bound * (2 * rng_uniform(&rng) - 1);
                    if (b == 1) {  // C: everything fresh
                        for (size_t i = 0; i < (size_t)N * D; i++) pin[i] = 0.02f * rng_normal(&rng);
                        for (int i = 0; i < N; i++) pb[i] = bound * (2 * rng_uniform(&rng) - 1);
                    }
                }
            }
        }
    }
    *params_out = mo.params;
    mo.params = nullptr;
    mi.params = nullptr;  // the caller's
    model_free(&mi);
    model_free(&mo);
    return "";
}

// ----------------------------------------------------------------------------
// for the benchmarks: the machine's float32 GEMM rate at one shape, now, in
// GFLOP/s, each way timed for `seconds`: the faster of Eigen's own parallel
// GEMM and matmul_forward (its row blocks, one thread each), so "% of GEMM"
// is measured against the best product this machine gives us, never a slow one.
double gemm_gflops(int M, int N, int K, double seconds) {
    MatRM a = MatRM::Random(M, K), b = MatRM::Random(N, K), c(M, N);
    auto rate = [&](bool ours) {
        auto product = [&] {
            if (ours) matmul_forward(c.data(), a.data(), b.data(), nullptr, M, K, N);
            else c.noalias() = a * b.transpose();
        };
        product();  // warm up
        int reps = 0;
        double t0 = now_seconds(), t;
        do {
            product();
            reps++;
            t = now_seconds() - t0;
        } while (t < seconds);
        return 2.0 * M * N * K * reps / t / 1e9;
    };
    return std::max(rate(false), rate(true));
}

}  // namespace cpu
