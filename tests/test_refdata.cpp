// Parity with an independent float64 implementation (tests/refdata/README.md):
// logits, loss and the gradient of every parameter tensor, in both forms of
// the token mixers. Like llm.c's test against PyTorch.
#include "test_util.h"

static void check_case(const char *model_path, const char *state_path, int form) {
    Model m;
    if (!load_model(model_path, &m)) return;
    DebugState ref;
    std::string e = read_debug_state(state_path, &ref);
    REQUIRE_MESSAGE(e.empty(), e);
    REQUIRE(ref.num_params == m.num_params);
    m.mixer_form = form;
    cpu::model_alloc_acts(&m, ref.B, ref.T, form == MIX_RECURRENT);
    cpu::model_forward(&m, ref.inputs.data(), ref.targets.data(), ref.B, ref.T);
    cpu::model_zero_grad(&m);
    cpu::model_backward(&m);
    size_t BT = (size_t)ref.B * ref.T;
    double e_logits = rel_err(m.acts.logits, ref.logits.data(), BT * m.config.vocab_size);
    double e_loss = fabs((double)m.loss - ref.loss) / fabs((double)ref.loss);
    printf("%s (%s form): logits %.2e  loss %.2e\n", model_path, form == MIX_CHUNKED ? "chunked" : "recurrent", e_logits, e_loss);
    CHECK(e_logits <= 1e-4);
    CHECK(e_loss <= 1e-5);
    double worst = 0;
    std::string worst_name;
    for (const ParamTensor &t : m.tensors) {
        double err = rel_err(m.grads + t.offset, ref.grads.data() + t.offset, t.size());
        if (err > worst) { worst = err; worst_name = t.name; }
        printf("  grad %-36s %.2e\n", t.name.c_str(), err);
        CHECK_MESSAGE(err <= 5e-4, t.name);
    }
    printf("  worst gradient: %s %.2e\n", worst_name.c_str(), worst);
    cpu::model_free(&m);
}

TEST_CASE("refdata: GLA, heads [4, 1]") {
    check_case("tests/refdata/gla_small.bin", "tests/refdata/gla_small.state.bin", MIX_CHUNKED);
    check_case("tests/refdata/gla_small.bin", "tests/refdata/gla_small.state.bin", MIX_RECURRENT);
}
TEST_CASE("refdata: GLA after merge, heads [1, 1]") {
    check_case("tests/refdata/gla_small_merge_every1_out.bin", "tests/refdata/gla_small_merge_every1_out.state.bin", MIX_CHUNKED);
    check_case("tests/refdata/gla_small_merge_every1_out.bin", "tests/refdata/gla_small_merge_every1_out.state.bin", MIX_RECURRENT);
}
TEST_CASE("refdata: Mamba2, N [16, 64]") {
    check_case("tests/refdata/mamba2_small.bin", "tests/refdata/mamba2_small.state.bin", MIX_CHUNKED);
    check_case("tests/refdata/mamba2_small.bin", "tests/refdata/mamba2_small.state.bin", MIX_RECURRENT);
}
TEST_CASE("refdata: Mamba2 after zero expansion, N [64, 64]") {
    check_case("tests/refdata/mamba2_small_zero_e4_every2_out.bin", "tests/refdata/mamba2_small_zero_e4_every2_out.state.bin", MIX_CHUNKED);
    check_case("tests/refdata/mamba2_small_zero_e4_every2_out.bin", "tests/refdata/mamba2_small_zero_e4_every2_out.state.bin", MIX_RECURRENT);
}
