"""Builds fusedrnn: one abi3 wheel on torch's stable ABI (loads on torch >= 2.10).

fusedrnn._C       CPU ops, always built.
fusedrnn._C_cuda  CUDA ops (csrc/cuda/*.cu), a second extension built with nvcc whenever
                  nvcc is found, even without a GPU or a CUDA torch; loaded only when
                  torch.version.cuda is set. See cuda_extensions().
"""
import glob
import os
import shutil

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))
# Target the stable ABI of torch 2.10: the same binary loads on 2.10 .. 2.13+.
TORCH_TARGET = "-DTORCH_TARGET_VERSION=0x020a000000000000"
CXX_FLAGS = ["-O3", "-fdiagnostics-color=always", TORCH_TARGET]
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


def cuda_extensions():
    """The hook for fusedrnn._C_cuda (the CUDA issue fills it in).

    torch's CUDAExtension refuses to build against a CPU torch (CUDA_HOME is forced to
    None there), so the CUDA module will be compiled with nvcc directly against the
    stable-ABI headers. Until kernels exist there is nothing to build.
    """
    sources = rel("csrc/cuda/*.cu")
    if not sources or shutil.which(os.getenv("NVCC", "nvcc")) is None:
        return []
    raise RuntimeError(
        "csrc/cuda/*.cu exist but the nvcc build step for fusedrnn._C_cuda is not written yet"
    )


setup(
    ext_modules=[cpu_extension(), *cuda_extensions()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
