// The test runner: doctest's main, plus a closing line "tests: N passed,
// N failed, N skipped" that any CI can read.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <cstdio>

struct SummaryLine : doctest::IReporter {
    SummaryLine(const doctest::ContextOptions &) {}
    void report_query(const doctest::QueryData &) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats &s) override {
        unsigned skipped = s.numTestCases - s.numTestCasesPassingFilters;
        unsigned passed = s.numTestCasesPassingFilters - s.numTestCasesFailed;
        printf("tests: %u passed, %u failed, %u skipped\n", passed, s.numTestCasesFailed, skipped);
    }
    void test_case_start(const doctest::TestCaseData &) override {}
    void test_case_reenter(const doctest::TestCaseData &) override {}
    void test_case_end(const doctest::CurrentTestCaseStats &) override {}
    void test_case_exception(const doctest::TestCaseException &) override {}
    void subcase_start(const doctest::SubcaseSignature &) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData &) override {}
    void log_message(const doctest::MessageData &) override {}
    void test_case_skipped(const doctest::TestCaseData &) override {}
};
REGISTER_LISTENER("summary", 1, SummaryLine);
