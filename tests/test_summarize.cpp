// ./infer --summarize: the experiment's tables and charts, from synthetic
// result files whose means, sds and gap shares are worked out by hand here.
#include "test_util.h"

// One run's files as --eval and ./train write them: bits/byte, MQAR at n = 4
// and 8 without a gap and with gap 128 (accuracies as fractions), passkey
// at 256 and 512 bytes (the same accuracy at every depth).
static void write_run(const std::string &dir, const char *kind, int seed, double bpb, const std::vector<double> &mqar, double passkey) {
    std::string base = dir + "/gla-" + kind + "-s" + std::to_string(seed);
    std::string tsv = strf("model\t%s.bin\nfamily\tGLA\nparams\t%d\nstate_floats\t%d\nbpb\t%.5f\n", base.c_str(),
                           strcmp(kind, "big") ? 1000 : 1200, strcmp(kind, "base") && strcmp(kind, "lpt") ? 16384 : 8192, bpb);
    for (int i = 0; i < 4; i++) tsv += strf("mqar\t%d\t%d\t%.5f\t2560\n", i % 2 ? 8 : 4, i < 2 ? 0 : 128, mqar[i]);
    for (int L : {256, 512})
        for (const char *depth : {"0.00", "0.25", "0.50", "0.75", "1.00"}) tsv += strf("passkey\t%d\t%s\t%.5f\t40\n", L, depth, passkey);
    std::string stats = strf("wall_seconds\t%d\npeak_rss_mb\t275\nsteps\t100\ntokens\t2000000\nparams\t1000\nstate_floats\t8192\n", 100 + seed);
    REQUIRE(write_file_atomic(base + ".eval.tsv", {{tsv.data(), tsv.size()}}).empty());
    REQUIRE(write_file_atomic(base + ".bin.stats", {{stats.data(), stats.size()}}).empty());
}

TEST_CASE("summarize: tables of mean ± sd, the share of the (b) − (a) gap, per-seed rows and charts with error bars") {
    std::string d = "/tmp/statex_summarize_" + std::to_string(getpid()), out;
    run_command("rm -rf " + d + " && mkdir -p " + d);
    CHECK(run_command("./infer --summarize " + d, &out) != 0);  // nothing there: a clear error
    CHECK(out.find("no FAMILY-KIND-sSEED.eval.tsv files in " + d) != std::string::npos);
    // per kind, seeds 1 and 2: bits/byte, then MQAR n=4, n=8, n=4 gap 128, n=8 gap 128
    write_run(d, "base", 1, 2.50, {0.40, 0.20, 0.10, 0.05}, 0.0);
    write_run(d, "base", 2, 2.52, {0.50, 0.20, 0.30, 0.05}, 0.1);
    write_run(d, "big", 1, 2.40, {0.80, 0.60, 0.30, 0.05}, 0.5);
    write_run(d, "big", 2, 2.42, {0.90, 0.70, 0.30, 0.05}, 0.7);
    write_run(d, "lpt", 1, 2.48, {0.50, 0.30, 0.10, 0.05}, 0.0);
    write_run(d, "lpt", 2, 2.50, {0.60, 0.30, 0.30, 0.05}, 0.0);
    write_run(d, "statex", 1, 2.43, {0.70, 0.50, 0.20, 0.05}, 0.3);
    write_run(d, "statex", 2, 2.45, {0.80, 0.50, 0.40, 0.05}, 0.4);
    int rc = run_command("./infer --summarize " + d, &out);
    CAPTURE(out);
    REQUIRE(rc == 0);
    std::vector<char> b;
    REQUIRE(read_file(d + "/results.md", &b).empty());
    std::string md(b.begin(), b.end());
    for (const char *want : {
             "## GLA\n\n| | base (a) | big state (b) | LPT | StateX reinit |\n|---|---|---|---|---|\n",
             "| seeds | 2 | 2 | 2 | 2 |",
             // base n=4: 40 and 50 -> 45.0 ± sqrt(50) = 7.1; bits/byte 2.51 ± 0.014
             "| MQAR n=4 | 45.0 ± 7.1 | 85.0 ± 7.1 | 55.0 ± 7.1 | 75.0 ± 7.1 |",
             "| validation bits/byte | 2.510 ± 0.014 | 2.410 ± 0.014 | 2.490 ± 0.014 | 2.440 ± 0.014 |",
             "| passkey 512 bytes (mean of depths) | 5.0 ± 7.1 | 60.0 ± 14.1 | 0.0 ± 0.0 | 35.0 ± 7.1 |",
             "| training time of this stage (s) | 101.5 ± 0.7 |",
             "| | (b) − (a) | 2 × max(sd a, sd b) | LPT | StateX reinit |\n|---|---|---|---|---|\n",
             // resolved: b − a = 40 > 2 × 7.07; LPT (55 − 45) / 40, StateX (75 − 45) / 40
             "| MQAR n=4 | 40.0 | 14.1 | 25% | 75% |",
             // b − a = -0.1 against 2 × 0.014: (2.49 − 2.51) / -0.1, (2.44 − 2.51) / -0.1
             "| validation bits/byte | -0.100 | 0.028 | 20% | 70% |",
             // sd a 0, sd b 7.07: b − a = 45 against 2 × 7.07; LPT (30 − 20) / 45, StateX (50 − 20) / 45
             "| MQAR n=8 | 45.0 | 14.1 | 22% | 67% |",
             // sd a 14.1, sd b 0: b − a = 10 under 2 × 14.1, not resolved (sd b alone would resolve it)
             "| MQAR n=4, gap 128 | 10.0 | 28.3 | - | - |",
             // no difference at all: nothing to close
             "| MQAR n=8, gap 128 | 0.0 | 0.0 | - | - |",
             "| kind | seed | bits/byte | MQAR n=4 | MQAR n=8 | MQAR n=4, gap 128 | MQAR n=8, gap 128 |\n|---|---|---|---|---|---|---|\n",
             "| base (a) | 1 | 2.500 | 40.0 | 20.0 | 10.0 | 5.0 |\n| base (a) | 2 | 2.520 | 50.0 | 20.0 | 30.0 | 5.0 |\n"
             "| big state (b) | 1 | 2.400 | 80.0 | 60.0 | 30.0 | 5.0 |\n",
             "| StateX reinit | 2 | 2.450 | 80.0 | 50.0 | 40.0 | 5.0 |\n",
             "![GLA MQAR](gla_mqar.png) ![GLA MQAR with a gap](gla_mqar_gap.png) ![GLA passkey](gla_passkey.png)"})
        CHECK_MESSAGE(md.find(want) != std::string::npos, want);
    CHECK(md.find("## Mamba2") == std::string::npos);  // no files of that family
    CHECK(md.find("StateX merge") == std::string::npos);
    CHECK(out.find(md) == 0);  // printed too
    for (const char *png : {"/gla_mqar.png", "/gla_mqar_gap.png", "/gla_passkey.png"}) {
        std::vector<char> p;
        CHECK(read_file(d + png, &p).empty());
        CHECK_MESSAGE(p.size() > 1000, png);
    }
    run_command("rm -rf " + d);
}
