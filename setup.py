"""Builds fusedrnn: one abi3 wheel on torch's stable ABI (loads on torch >= 2.10).

fusedrnn._C       CPU ops, always built.
fusedrnn._C_cuda  CUDA ops (csrc/cuda/), a second extension built with nvcc whenever nvcc
                  is found, even without a GPU or a CUDA torch; loaded only when
                  torch.version.cuda is set. See cuda_extensions().
"""
import glob
import os
import shutil
import subprocess

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Target the stable ABI of torch 2.10: the same binary loads on 2.10 .. 2.13+.
TORCH_TARGET = "-DTORCH_TARGET_VERSION=0x020a000000000000"
# -fno-trapping-math: the cell loops' selects (exp_'s clamp, tanh_'s two branches) may
# evaluate both sides. With trapping math (gcc's default) their comparisons count as
# possible traps, so gcc kept them as branches and vectorized none of the per-unit loops in
# the AVX2 and baseline clones: every cell ran one unit at a time on CPUs without
# AVX-512. Nothing here reads the FP exception flags; values and NaN handling are the same.
CXX_FLAGS = ["-O3", "-fno-trapping-math", "-fdiagnostics-color=always", TORCH_TARGET]
# No debug info in the wheel (sysconfig's CFLAGS add -g).
LINK_FLAGS = ["-Wl,-s"] if os.getenv("FUSEDRNN_DEBUG", "0") != "1" else []


def rel(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def cpu_extension():
    return CppExtension(
        "fusedrnn._C",
        rel("csrc/registry.cpp") + rel("csrc/cpu/*.cpp"),
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS,
        py_limited_api=True,
    )


# The release wheel's GPU targets (TORCH_CUDA_ARCH_LIST overrides): Ampere, Ada, Hopper,
# Blackwell (datacenter and consumer), plus PTX of the newest for later GPUs.
DEFAULT_CUDA_ARCHS = "8.0;8.6;8.9;9.0;10.0;12.0+PTX"


def cuda_home():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.getenv(var):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def gencode_flags(arch_list):
    """TORCH_CUDA_ARCH_LIST syntax ("8.0;9.0a 12.0+PTX") to nvcc -gencode flags."""
    flags = []
    for arch in arch_list.replace(";", " ").split():
        ptx = arch.endswith("+PTX")
        num = arch.removesuffix("+PTX").replace(".", "")
        flags.append(f"-gencode=arch=compute_{num},code=sm_{num}")
        if ptx:
            flags.append(f"-gencode=arch=compute_{num},code=compute_{num}")
    return flags


def cuda_extensions():
    """fusedrnn._C_cuda: csrc/cuda/*.cu compiled by nvcc, linked with csrc/cuda/ops.cpp.

    torch's CUDAExtension refuses to build against a CPU torch (its CUDA_HOME is forced to
    None there), and the kernels need no torch headers, so build_ext below compiles the .cu
    files with nvcc itself and links the objects into this extension. ops.cpp uses only the
    stable ABI, so one build loads on CPU-built and CUDA-built torch alike; it is imported
    only when torch.version.cuda is set. It NEEDs libtorch.so (--no-as-needed), which on a
    CUDA torch brings libtorch_cuda.so and its aoti_torch_get_current_cuda_stream.

    FUSEDRNN_CUDA=0 skips it, =1 requires it (an error without nvcc); unset builds it when
    nvcc is found.
    """
    want = os.getenv("FUSEDRNN_CUDA", "auto")
    home = cuda_home()
    if want == "0":
        return []
    if home is None or not os.path.exists(os.path.join(home, "bin", "nvcc")):
        if want == "1":
            raise RuntimeError("FUSEDRNN_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        return []
    ext = CppExtension(
        "fusedrnn._C_cuda",
        rel("csrc/cuda/ops.cpp"),
        include_dirs=[os.path.join(home, "include")],
        library_dirs=[os.path.join(home, "lib64")],
        libraries=["cudart"],
        define_macros=[("USE_CUDA", None)],
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS + ["-Wl,--no-as-needed", "-ltorch", "-Wl,--as-needed"],
        py_limited_api=True,
    )
    ext.cu_sources = rel("csrc/cuda/*.cu")
    ext.nvcc = os.path.join(home, "bin", "nvcc")
    return [ext]


class build_ext(BuildExtension):
    """BuildExtension, plus nvcc for an extension's cu_sources (objects linked in)."""

    def build_extension(self, ext):
        if getattr(ext, "cu_sources", None):
            ext.extra_objects = [self.nvcc_compile(ext, src) for src in ext.cu_sources]
        super().build_extension(ext)

    def nvcc_compile(self, ext, src):
        obj = os.path.join(self.build_temp, "nvcc", os.path.basename(src) + ".o")
        os.makedirs(os.path.dirname(obj), exist_ok=True)
        archs = os.getenv("TORCH_CUDA_ARCH_LIST") or DEFAULT_CUDA_ARCHS
        cmd = [ext.nvcc, "-std=c++17", "-O3", "-Xcompiler", "-fPIC", "--threads", "0",
               *gencode_flags(archs), "-c", os.path.join(ROOT, src), "-o", obj]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        return obj


setup(
    ext_modules=[cpu_extension(), *cuda_extensions()],
    cmdclass={"build_ext": build_ext},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
