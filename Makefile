# The README's commands. setup.py is the one way to build the extension; CMake is C++ tests only.
SHELL := /bin/bash
PYTHON ?= python
PIP := $(PYTHON) -m pip
NVCC ?= nvcc
CU_SRCS := $(wildcard csrc/cuda/*.cu)
SO := python/fusedrnn/_C.abi3.so
EXT_SRCS := setup.py pyproject.toml $(wildcard csrc/*.h csrc/*.cpp csrc/cpu/* csrc/cuda/*)
.PHONY: deps setup demo test bench wheel ctest cuda-check gpu-check gpu-wheel clean

# Install only what is missing. find_spec checks torch without importing it, so a CUDA torch
# (or one whose first import flakes) is never replaced by the CPU build.
deps:
	@$(PYTHON) -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is None)" \
		|| $(PIP) install torch==2.13.0
	@$(PYTHON) -c "import setuptools as s, sys; sys.exit(tuple(map(int, s.__version__.split('.')[:2])) < (70, 1))" \
		|| $(PIP) install "setuptools>=70.1"
	@for m in pytest numpy; do \
		$(PYTHON) -c "import $$m" 2>/dev/null || $(PIP) install $$m || exit 1; done
	@command -v ninja >/dev/null || $(PIP) install ninja

# setuptools compiles editable builds in a fresh temp dir, so every `pip install -e` recompiles
# everything (~15 s). Skip it while the .so is newer than its sources and the install is ours.
$(SO): $(EXT_SRCS) | deps
	$(PIP) install --no-build-isolation --no-deps -e .

# The .so can be up to date while fusedrnn is not installed (a new venv): install then too.
setup: deps $(SO)
	@cd /tmp && $(PYTHON) -c "import fusedrnn" 2>/dev/null || (cd $(CURDIR) && $(PIP) install --no-build-isolation --no-deps -e .)

demo: setup
	$(PYTHON) -m fusedrnn

test: setup
	$(PYTHON) -m pytest tests -q

# The benchmark grid on this machine (results into benchmarks/results/); the plot needs
# matplotlib, installed here if missing. GRID=fastrnns,latency runs a subset.
GRID ?= all
bench: setup
	@$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PIP) install matplotlib
	$(PYTHON) -m fusedrnn bench --grid $(GRID)

# The release wheel: CPU module, and the CUDA module for every GPU in setup.py's default
# arch list (TORCH_CUDA_ARCH_LIST overrides) whenever nvcc is found (FUSEDRNN_CUDA=1 requires it).
wheel: deps
	rm -f dist/fusedrnn-*.whl
	$(PIP) wheel --no-build-isolation --no-deps -w dist .

# On the GPU machine (torch with CUDA preinstalled, no network): benchmarks/gpu_run.sh
# installs the wheel in dist/gpu/ (built here, without a GPU: `make gpu-wheel`) or builds one
# for this GPU, runs every CUDA test, compute-sanitizer, the step kernels and the CUDA grid,
# writing logs and results into GPU_OUT (e.g. $$OUT on a device lease).
GPU_OUT ?= benchmarks/results/gpu-check
gpu-check:
	OUT=$(GPU_OUT) bash benchmarks/gpu_run.sh $$(git rev-parse HEAD 2>/dev/null || echo unknown)

# The wheel a GPU lease installs (sm_90, Hopper), built where there is no GPU.
gpu-wheel: deps
	rm -rf dist/gpu
	FUSEDRNN_CUDA=1 TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} $(PIP) wheel --no-build-isolation --no-deps -w dist/gpu .

ctest:
	cmake -S . -B build/cmake -G Ninja
	cmake --build build/cmake
	ctest --test-dir build/cmake --output-on-failure

# Compile-check only: CI has nvcc and the CUDA headers but no GPU and no CUDA torch.
cuda-check: $(if $(CU_SRCS),deps)
ifeq ($(CU_SRCS),)
	@echo "no CUDA sources"
else
	@inc=$$($(PYTHON) -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I' + p for p in include_paths()))") \
		&& for f in $(CU_SRCS); do \
		echo "nvcc $$f"; \
		$(NVCC) -std=c++17 -c -o /dev/null --generate-code arch=compute_90,code=sm_90 $$inc \
			-DUSE_CUDA -DTORCH_TARGET_VERSION=0x020a000000000000 $$f || exit 1; done
endif

clean:
	rm -rf build dist python/*.egg-info *.egg-info python/fusedrnn/*.so .pytest_cache
