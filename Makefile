# statex: build, test, benchmark, train.
#
#   make              build ./train and ./infer (with CUDA when nvcc is found)
#   make test         build and run the tests (GPU tests skip without a GPU)
#   make sanitize     the same tests under AddressSanitizer and UBSan (CPU only)
#   make train        the main job: prepare the corpus, train a small model, sample
#   make bench        throughput, FLOP rate and memory for the benchmark presets
#   make experiment   the StateX recall experiment (see README.md)
#   make test-gpu     only the GPU tests; a GPU that cannot be used fails them
#   make gpu-check    the first command on a machine with a GPU (tests/gpu_check.sh)
#   make vendor-headers  copy Eigen, stb and doctest into vendor/ (ignored by git)
#
# Missing Debian packages are installed when run as root (never with NO_APT=1);
# otherwise the exact apt-get command is printed.

# The header-only libraries: Debian's copies where they are, else the ones that
# `make vendor-headers` put into vendor/ (on a machine without apt, carry that
# folder along with the tree). Any of the three can be set on the command line.
VENDOR      = vendor
EIGEN_INC   ?= $(if $(wildcard /usr/include/eigen3/Eigen/Dense),/usr/include/eigen3,$(VENDOR)/eigen3)
STB_INC     ?= $(if $(wildcard /usr/include/stb/stb_image_write.h),/usr/include/stb,$(VENDOR)/stb)
DOCTEST_INC ?= $(if $(wildcard /usr/include/doctest/doctest.h),/usr/include,$(VENDOR))

CXX      ?= g++
# -mtune=generic: GCC 12 tunes for znver3 on Zen 3 and Zen 4 under -march=native,
# and that tuning folds the loads of Eigen's packed panels into every FMA of its
# GEMM kernel, so the load ports bind: Eigen's GEMM at 128-144 GFLOP/s against
# 160-181 tuned generically on a 2-core Zen 4, where generic tuning trains
# 17-27% faster (README, "Speed and memory"). The ISA stays the machine's own.
CXXFLAGS ?= -O3 -march=native -mtune=generic -mprefer-vector-width=512
# (the benchmarks print these flags beside their figures: a figure belongs to a build too)
OPT_FLAGS := $(CXXFLAGS)
CXXFLAGS += -std=c++17 -fopenmp -Wall -Wextra -isystem $(EIGEN_INC) -isystem $(STB_INC)
# sqrtf need not set errno (nothing reads it), so loops with a sqrt vectorise
# (AdamW); the results are the same, sqrt being correctly rounded either way.
# No code here traps on float exceptions, so a loop with a comparison or a
# select (exp_fast's clamp, hence every sigmoid, silu and decay) may run as
# vector blends: without AVX-512's masks GCC keeps such loops scalar otherwise.
# Each element gets the same operations, so the results are the same.
CXXFLAGS += -fno-math-errno -fno-trapping-math
CXXFLAGS += -DSTATEX_OPT_FLAGS='"$(subst ',,$(subst ",,$(OPT_FLAGS)))"'
# (never -isystem /usr/include itself: it would break the C++ headers' #include_next)
CXXFLAGS += $(if $(filter /usr/include /usr/include/,$(DOCTEST_INC)),,-isystem $(DOCTEST_INC))
# Eigen's AVX-512 kernels trip GCC 12's (false) uninitialized warnings
EIGEN_FLAGS = -Wno-uninitialized -Wno-maybe-uninitialized
LDLIBS   = -fopenmp -lm

# CUDA: found on PATH or in the default toolkit place. sm_90 code plus PTX so
# newer GPUs can JIT it; every warning is an error (WERROR=0: only a warning,
# for a host compiler newer than the one this was written for).
WERROR ?= 1
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifneq ($(NVCC),)
  # the toolkit root: asked of nvcc itself (it may be a wrapper script on
  # PATH), else next to nvcc, else the default place; the first with headers
  NVCC_TOP   := $(realpath $(shell $(NVCC) --dryrun -c -x cu /dev/null -o /dev/null 2>&1 \
                  | sed -n 's/^\#\$$ TOP=//p'))
  CUDA_HOME  ?= $(firstword $(foreach d,$(NVCC_TOP) $(patsubst %/bin/nvcc,%,$(NVCC)) /usr/local/cuda, \
                  $(if $(wildcard $(d)/include/cuda_runtime.h),$(d))))
  ifeq ($(CUDA_HOME),)
    $(error nvcc is $(NVCC), but no CUDA toolkit with include/cuda_runtime.h was found; set CUDA_HOME=...)
  endif
  NVCCFLAGS  = -O3 -std=c++17 -gencode arch=compute_90,code=[sm_90,compute_90] \
               $(if $(filter 1,$(WERROR)),-Werror all-warnings -Xcompiler -Werror) -Xcompiler -Wall,-Wextra,-fopenmp
  GPU_OBJ    = build/statex_cuda.o
  CXXFLAGS  += -DSTATEX_CUDA -I$(CUDA_HOME)/include
  LDLIBS    += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart
else
  GPU_OBJ    =
endif

# Debian packages this project needs: "file-it-provides:package"; the headers
# for the build (deps), the corpus for `make data` (deps-data)
HEADERS = $(EIGEN_INC)/Eigen/Dense:libeigen3-dev \
          $(STB_INC)/stb_image_write.h:libstb-dev \
          $(DOCTEST_INC)/doctest/doctest.h:doctest-dev
CORPUS  = /usr/share/games/fortunes/fortunes:fortunes

CPU_OBJ = build/statex_cpu.o
TESTS   = $(wildcard tests/test_*.cpp)

# The binaries live at the top (./train, ./infer), but `make train` is the main
# job, not the binary; so the link rules name the binaries by absolute path.
BIN_TRAIN = $(CURDIR)/train
BIN_INFER = $(CURDIR)/infer
BIN_TESTS = $(CURDIR)/tests/run_tests

.PHONY: all deps deps-data test test-gpu sanitize gpu-check vendor-headers bench bench-gpu train data experiment experiment-quick clean
all: $(BIN_TRAIN) $(BIN_INFER)

# $(call install,file:package list): installs what is missing (root, and not
# NO_APT=1), else says what is missing and how to bring it
install = missing=""; for fp in $(1); do f=$${fp%%:*}; p=$${fp\#*:}; \
	  [ -e "$$f" ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && [ "$(NO_APT)" != 1 ] && command -v apt-get >/dev/null; then \
	    echo "installing:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq$$missing >/dev/null) || \
	      { echo "error: apt-get could not install$$missing"; exit 1; }; \
	  else \
	    echo "error: missing Debian packages:$$missing"; \
	    echo "install them with:  sudo apt-get install -y$$missing"; \
	    echo "or, without apt (headers only): run 'make vendor-headers' on a machine that has them"; \
	    echo "and bring the $(VENDOR)/ folder along with the tree"; exit 1; \
	  fi; \
	fi

deps:
	@$(call install,$(HEADERS))

deps-data:
	@$(call install,$(CORPUS))

build/statex_cpu.o: statex_cpu.cpp model.h Makefile | deps
	@mkdir -p build
	$(CXX) $(CXXFLAGS) $(EIGEN_FLAGS) -c $< -o $@

build/statex_cuda.o: statex.cu model.h Makefile | deps
	@mkdir -p build
	$(NVCC) $(NVCCFLAGS) -c $< -o $@

build/%.o: %.cpp model.h data/tasks.h $(wildcard tools/*.h) Makefile | deps
	@mkdir -p build
	$(CXX) $(CXXFLAGS) -c $< -o $@

build/tests/%.o: tests/%.cpp tests/test_util.h model.h data/tasks.h $(wildcard tools/*.h) Makefile | deps
	@mkdir -p build/tests
	$(CXX) $(CXXFLAGS) -c $< -o $@

$(BIN_TRAIN): build/train.o $(CPU_OBJ) $(GPU_OBJ)
	$(CXX) $^ -o $@ $(LDLIBS)

$(BIN_INFER): build/infer.o $(CPU_OBJ) $(GPU_OBJ)
	$(CXX) $^ -o $@ $(LDLIBS)

$(BIN_TESTS): $(patsubst tests/%.cpp,build/tests/%.o,$(TESTS)) $(CPU_OBJ) $(GPU_OBJ)
	$(CXX) $^ -o $@ $(LDLIBS)

# the corpus: Debian's fortunes, cleaned to printable ASCII, split train/val
# (both files one target: a tree that lost val.txt prepares the corpus again)
CORPUS_FILES = data/train.txt data/val.txt
data: $(CORPUS_FILES)
$(CORPUS_FILES) &: data/prepare.sh | deps-data
	sh data/prepare.sh

test: $(BIN_TESTS) $(BIN_TRAIN) $(BIN_INFER) $(CORPUS_FILES)
	./tests/run_tests

# only the GPU tests; without a usable GPU they fail, saying why
test-gpu: $(BIN_TESTS)
	STATEX_REQUIRE_GPU=1 ./tests/run_tests -tc="gpu:*"

# the first command on a machine with a GPU: a clean build, the GPU and its
# driver, the GPU tests, compute-sanitizer, the GPU benchmark; one log, at most
# 8 minutes; never installs anything (tests/gpu_check.sh)
gpu-check:
	@bash tests/gpu_check.sh

# Eigen, stb and doctest (header-only) into vendor/, for a machine without apt
vendor-headers:
	@for f in $(EIGEN_INC)/Eigen/Dense $(STB_INC)/stb_image_write.h $(DOCTEST_INC)/doctest/doctest.h; do \
	  case "$$f" in $(VENDOR)/*) echo "error: $$f: the headers are not on this machine; run this where they are"; exit 1;; esac; \
	  [ -e "$$f" ] || { echo "error: $$f not found (make deps installs it)"; exit 1; }; done
	rm -rf $(VENDOR)
	mkdir -p $(VENDOR)/eigen3 $(VENDOR)/stb $(VENDOR)/doctest
	cp -r $(EIGEN_INC)/Eigen $(VENDOR)/eigen3/
	cp $(STB_INC)/stb_image_write.h $(VENDOR)/stb/
	cp $(DOCTEST_INC)/doctest/doctest.h $(VENDOR)/doctest/
	@echo "$(VENDOR)/: $$(du -sh $(VENDOR) | cut -f1); git ignores it; the Makefile uses it where the Debian headers are missing"

# The whole suite under AddressSanitizer and UBSan, CPU only, built in its own
# directory so the normal build stays. It runs from that directory, where
# ./train and ./infer are the sanitized binaries and data/ and tests/refdata
# are links to the real ones. Any report fails the run: UBSan halts, and the
# tests fail when a binary they run prints a report.
SAN_DIR   = build/sanitize
SAN_FLAGS = -O2 -g -march=native -fno-omit-frame-pointer -fsanitize=address,undefined -std=c++17 -fopenmp \
            -Wall -Wextra -isystem $(EIGEN_INC) -isystem $(STB_INC) \
            $(if $(filter /usr/include /usr/include/,$(DOCTEST_INC)),,-isystem $(DOCTEST_INC))
SAN_ENV   = ASAN_OPTIONS=detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1 \
            UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

$(SAN_DIR)/%.o: %.cpp model.h data/tasks.h tests/test_util.h $(wildcard tools/*.h) | deps
	@mkdir -p $(dir $@)
	$(CXX) $(SAN_FLAGS) $(EIGEN_FLAGS) -c $< -o $@

$(SAN_DIR)/train $(SAN_DIR)/infer: $(SAN_DIR)/%: $(SAN_DIR)/%.o $(SAN_DIR)/statex_cpu.o
	$(CXX) $(SAN_FLAGS) $^ -o $@ -lm

$(SAN_DIR)/tests/run_tests: $(patsubst %.cpp,$(SAN_DIR)/%.o,$(TESTS)) $(SAN_DIR)/statex_cpu.o
	$(CXX) $(SAN_FLAGS) $^ -o $@ -lm

sanitize: $(SAN_DIR)/train $(SAN_DIR)/infer $(SAN_DIR)/tests/run_tests $(CORPUS_FILES)
	ln -sfn ../../data $(SAN_DIR)/data
	ln -sfn ../../../tests/refdata $(SAN_DIR)/tests/refdata
	ln -sfn ../../../tests/kill_test.sh $(SAN_DIR)/tests/kill_test.sh
	cd $(SAN_DIR) && $(SAN_ENV) ./tests/run_tests

# one preset per process, so each peak-memory figure is that preset's alone;
# the GPU lines run when a GPU is there and say why not otherwise (once)
GPU_BENCH_PRESETS = gla-small mamba2-small gla-1.3b mamba2-1.3b
bench: $(BIN_TRAIN) $(BIN_INFER)
	@./train --bench --preset gla-small
	@./train --bench --preset mamba2-small
	@./infer --bench --preset gla-small
	@./infer --bench --preset mamba2-small
	@$(MAKE) --no-print-directory bench-gpu

bench-gpu: $(BIN_TRAIN) $(BIN_INFER)
	@for p in $(GPU_BENCH_PRESETS); do \
	  out=$$(./train --bench --device cuda --preset $$p) || { echo "$$out"; exit 1; }; \
	  echo "$$out"; case "$$out" in *skipped*) break;; esac; done
	@./infer --bench --device cuda

train: $(BIN_TRAIN) $(BIN_INFER) $(CORPUS_FILES)
	./train --preset tiny-mamba2 --n-layer 4 --d-state 16 --batch 4 --lr 4e-3 --steps 3400 --eval-every 200 \
	  --out out/tiny-mamba2.bin
	./infer --model out/tiny-mamba2.bin --prompt "The " --max-tokens 400 --seed 1

# the StateX recall experiment (about 45 minutes on 2 CPU cores; see README.md), and its smoke test
experiment: $(BIN_TRAIN) $(BIN_INFER) $(CORPUS_FILES)
	sh data/experiment.sh out/experiment

experiment-quick: $(BIN_TRAIN) $(BIN_INFER) $(CORPUS_FILES)
	sh data/experiment.sh --quick out/experiment-quick

clean:
	rm -rf build $(BIN_TRAIN) $(BIN_INFER) $(BIN_TESTS)
