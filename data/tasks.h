// data/tasks.h: what the models read. Byte tokens (vocab 256): plain text uses
// bytes 0..127; the synthetic recall tasks use the high bytes, keys 128..191
// and values 192..255, so they never collide with text. A target of -1 means
// "no loss here".
//
//   - Corpus: a text file, bytes >= 128 replaced by '?'.
//   - Text windows: random spans of T+1 bytes, targets = inputs shifted by one.
//   - MQAR (multi-query associative recall): k1 v1 .. kn vn [gap] then the keys
//     again in a new order, each followed by its value; only those values are
//     targets.
//   - Passkey: filler text, "The pass key is DDDDD. Remember it." at a depth,
//     then "What is the pass key? The pass key is "; the 5 digits are targets.
//   - A training batch mixes text rows with recall rows at a given fraction;
//     an MQAR row packs instances back to back, so its targets are dense.
#pragma once
#include "../model.h"

struct Corpus {
    std::string path;
    std::vector<uint8_t> bytes;
};

// Reads a text corpus; "" on success, else the reason. Needs at least
// min_bytes bytes (a window of T+1 for training).
inline std::string load_corpus(const std::string &path, size_t min_bytes, Corpus *c) {
    std::vector<char> raw;
    std::string e = read_file(path, &raw);
    if (!e.empty()) return e;
    if (raw.empty()) return strf("%s is empty: a corpus needs text", path.c_str());
    if (raw.size() < min_bytes) return strf("%s has %zu bytes, fewer than the %zu one window needs", path.c_str(), raw.size(), min_bytes);
    c->path = path;
    c->bytes.resize(raw.size());
    for (size_t i = 0; i < raw.size(); i++) {
        uint8_t b = (uint8_t)raw[i];
        c->bytes[i] = b < 128 ? b : (uint8_t)'?';
    }
    return "";
}

// A random window: inputs = bytes[s .. s+T), targets = bytes[s+1 .. s+T].
inline void sample_text(const Corpus *c, Rng *rng, int T, int *inputs, int *targets) {
    size_t s = (size_t)(rng_u64(rng) % (c->bytes.size() - T));
    for (int t = 0; t < T; t++) {
        inputs[t] = c->bytes[s + t];
        targets[t] = c->bytes[s + t + 1];
    }
}

// Writes one MQAR instance of n pairs (1 <= n <= 64) followed by `gap` filler
// bytes before the queries. seq gets the tokens, is_target (1/0) marks the
// query values. Returns the length, 4n + gap.
inline int mqar_instance(int n, const uint8_t *gap, int gap_len, Rng *rng, int *seq, char *is_target) {
    int keys[64], vals[64], order[64];
    for (int i = 0; i < 64; i++) keys[i] = 128 + i;
    for (int i = 0; i < n; i++) {  // n distinct keys: a partial shuffle
        int j = i + rng_int(rng, 64 - i);
        std::swap(keys[i], keys[j]);
        vals[i] = 192 + rng_int(rng, 64);
        order[i] = i;
    }
    for (int i = n - 1; i > 0; i--) std::swap(order[i], order[rng_int(rng, i + 1)]);
    int q = 2 * n + gap_len, L = q + 2 * n;  // the queries start at q
    for (int i = 0; i < n; i++) { seq[2 * i] = keys[i]; seq[2 * i + 1] = vals[i]; }
    for (int i = 0; i < gap_len; i++) seq[2 * n + i] = gap[i];
    for (int i = 0; i < n; i++) { seq[q + 2 * i] = keys[order[i]]; seq[q + 2 * i + 1] = vals[order[i]]; }
    for (int i = 0; i < L; i++) is_target[i] = i >= q && (i - q) % 2 == 1;
    return L;
}

// The passkey prompt: filler sentences with the key sentence at `depth` (0 =
// start, 1 = end), padded so the whole prompt is `length` bytes (at least the
// two fixed sentences), ending in the question. answer gets the 5 digits.
inline std::string passkey_prompt(int length, double depth, Rng *rng, std::string *answer) {
    static const char *filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
    char key[6];
    for (int i = 0; i < 5; i++) key[i] = (char)('0' + rng_int(rng, 10));
    key[5] = 0;
    *answer = key;
    std::string needle = std::string("The pass key is ") + key + ". Remember it. ";
    std::string question = "What is the pass key? The pass key is ";
    int fill = std::max(0, length - (int)needle.size() - (int)question.size());
    std::string text;
    while ((int)text.size() < fill) text += filler;
    text.resize(fill);
    size_t at = (size_t)(depth * fill);
    while (at > 0 && at < text.size() && text[at - 1] != ' ') at--;  // insert at a word boundary
    return text.substr(0, at) + needle + text.substr(at) + question;
}

// What goes into a training batch besides text.
struct RecallMix {
    float frac = 0;          // fraction of rows that hold a recall instance
    float passkey_share = 0; // of those, the share that are passkey (the rest MQAR)
    int mqar_min = 4, mqar_max = 32;  // pairs per MQAR instance, drawn log-uniformly
    int mqar_gap_max = 0;    // filler text between pairs and queries, drawn uniformly up to this
};

// One row of T tokens: with probability mix.frac a recall row, else text.
// A passkey row is one passkey prompt and its answer, then text; an MQAR row
// is MQAR instances back to back (fresh keys each), so that recall targets
// are dense; text positions have next-byte targets, and in a recall instance
// only the answers are targets.
inline void sample_row(const Corpus *c, const RecallMix *mix, Rng *rng, int T, int *inputs, int *targets) {
    sample_text(c, rng, T, inputs, targets);
    if (mix->frac <= 0 || rng_uniform(rng) >= mix->frac) return;
    std::vector<int> seq(T + 1);
    std::vector<char> is_target(T + 1, 0);
    int L = 0;
    if (rng_uniform(rng) < mix->passkey_share) {
        // prompt lengths vary from 64 bytes to the whole row, less the answer
        int len = T >= 71 ? 64 + rng_int(rng, T - 70) : 64;
        std::string answer, p = passkey_prompt(len, rng_uniform(rng), rng, &answer);
        std::string s = p + answer + ".\n";
        L = std::min((int)s.size(), T + 1);
        for (int i = 0; i < L; i++) { seq[i] = (uint8_t)s[i]; is_target[i] = i >= (int)p.size() && i < (int)p.size() + 5; }
    } else {
        for (int room = T + 1; room >= 4 * mix->mqar_min; room = T + 1 - L) {  // while the smallest instance fits
            // pairs log-uniform in [mqar_min, mqar_max]: small instances, the
            // easiest to learn from, are as common as large ones per octave
            double lo = log(mix->mqar_min), hi = log(mix->mqar_max + 1.0);
            int n = std::min((int)exp(lo + (hi - lo) * rng_uniform(rng)), std::min(mix->mqar_max, room / 4));
            int gap = std::min(mix->mqar_gap_max > 0 ? rng_int(rng, mix->mqar_gap_max + 1) : 0, room - 4 * n);
            size_t s0 = (size_t)(rng_u64(rng) % (c->bytes.size() - gap));
            L += mqar_instance(n, c->bytes.data() + s0, gap, rng, seq.data() + L, is_target.data() + L);
        }
    }
    // seq[0..L) replaces the start of the row; the text after it keeps its targets
    for (int t = 0; t < T; t++) {
        if (t < L) inputs[t] = seq[t];
        if (t + 1 < L) targets[t] = is_target[t + 1] ? seq[t + 1] : -1;
        else if (t + 1 == L) targets[t] = -1;  // from the instance into unrelated text
    }
}

// A batch of B rows; rows are drawn from an RNG seeded by (seed, step, row), so
// any step's batch can be rebuilt exactly (that is how --resume stays exact).
inline void sample_batch(const Corpus *c, const RecallMix *mix, uint64_t seed, int step, int B, int T, int *inputs, int *targets) {
    for (int b = 0; b < B; b++) {
        Rng rng = {seed * 0x9E3779B97F4A7C15ull + (uint64_t)step * 1000003ull + (uint64_t)b};
        rng_u64(&rng);
        sample_row(c, mix, &rng, T, inputs + (size_t)b * T, targets + (size_t)b * T);
    }
}

// Fixed validation windows: consecutive spans of T+1 bytes from the start of
// the corpus, at most max_rows of them.
inline int validation_rows(const Corpus *c, int T, int max_rows, std::vector<int> *inputs, std::vector<int> *targets) {
    int rows = (int)std::min((size_t)max_rows, (c->bytes.size() - 1) / T);
    inputs->resize((size_t)rows * T);
    targets->resize((size_t)rows * T);
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < T; t++) {
            (*inputs)[(size_t)r * T + t] = c->bytes[(size_t)r * T + t];
            (*targets)[(size_t)r * T + t] = c->bytes[(size_t)r * T + t + 1];
        }
    return rows;
}
