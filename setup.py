"""Build equifast: the Python packages and the fused operator in ``csrc/``.

The C++ (CPU) operator is always built, but on Windows (MSVC cannot compile it: the package
runs on the PyTorch reference there). The CUDA sources are compiled too when torch is a CUDA
build and a CUDA 12+ toolkit of its major version is found; ``EQUIFAST_NO_CUDA=1`` turns that
off. Without OpenMP in the compiler the CPU operator is built single-threaded. Install with
``pip install --no-build-isolation -e .`` so the build uses the torch already installed.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup

import torch
from torch.utils import cpp_extension


def _cuda_home():
    """The CUDA toolkit to build with: CUDA_HOME / CUDA_PATH, else /usr/local/cuda, else the one
    whose nvcc is on PATH (torch's own guess, /usr/local, fails to link on some machines)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        if not os.path.exists(os.path.join(home, "bin", "nvcc")):
            raise SystemExit(f"equifast: CUDA_HOME/CUDA_PATH is {home!r}, which has no bin/nvcc; "
                             "point it at a CUDA toolkit, unset it, or set EQUIFAST_NO_CUDA=1.")
        return home
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None


def _cuda_wanted() -> bool:
    """Whether to compile the CUDA kernels; says why not when it does not."""
    if os.environ.get("EQUIFAST_NO_CUDA", "0").lower() not in ("", "0", "false", "no"):
        print("equifast: EQUIFAST_NO_CUDA is set: building the CPU operator only")
        return False
    if torch.version.cuda is None:
        print("equifast: torch is a CPU build: building the CPU operator only")
        return False
    home = _cuda_home()
    if home is None:
        print("equifast: no CUDA toolkit found (CUDA_HOME, /usr/local/cuda, nvcc on PATH): "
              "building the CPU operator only")
        return False
    out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True,
                         text=True).stdout
    found = re.search(r"release (\d+)\.(\d+)", out)
    if found is not None and int(found.group(1)) < 12:  # torch 2.6/2.7 have CUDA 11.8 builds
        print(f"equifast: the CUDA toolkit in {home} ({found.group(0)}) is older than CUDA 12, "
              "whose nvcc the CUDA kernels need (C++20): building the CPU operator only; set "
              "CUDA_HOME to CUDA 12 or newer (and a torch built for it) for the CUDA kernels")
        return False
    if found is None or found.group(1) != torch.version.cuda.split(".")[0]:
        print(f"equifast: the CUDA toolkit in {home} ({found.group(0) if found else 'unknown'}) "
              f"does not match torch's CUDA {torch.version.cuda}: building the CPU operator only; "
              "set CUDA_HOME to a matching toolkit for the CUDA kernels")
        return False
    os.environ["CUDA_HOME"] = home
    cpp_extension.CUDA_HOME = home
    print(f"equifast: building the CPU operator and the CUDA kernels ({home}, {found.group(0)})")
    return True


def _command(cxx: str) -> list:
    """``CXX`` as the build runs it: a command line, which may start with a wrapper
    (``ccache g++``); as one name it was no program, and the checks below were skipped."""
    return shlex.split(cxx) or ["c++"]


def _check_compiler() -> None:
    """The CPU kernels use GCC 12's vector builtins (__builtin_shufflevector, x86-64-v3/v4
    targets): an older GCC is refused here, with the fix, rather than deep in the build."""
    cxx = os.environ.get("CXX", "c++")
    try:
        text = subprocess.run(_command(cxx) + ["--version"], capture_output=True, text=True).stdout
        major = int(subprocess.run(_command(cxx) + ["-dumpversion"], capture_output=True,
                                   text=True).stdout.split(".")[0])
    except (OSError, ValueError):
        return  # no usable compiler: the build says so itself
    if "clang" not in text.lower() and major < 12:
        raise SystemExit(f"equifast: the C++ compiler {cxx!r} is GCC {major}; the CPU kernels need "
                         "GCC 12 or newer. Install g++-12 (or newer) and build with CXX=g++-12.")


def _openmp() -> list:
    """``["-fopenmp"]`` where the C++ compiler builds and links OpenMP code: torch's
    ``at::parallel_for``, inlined into the operator, then runs on torch's threads. Apple's clang
    (no -fopenmp) and a clang without libomp (no <omp.h>) failed the build with that error; the
    operator is then built without it, single-threaded, and says so."""
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.cpp")
        with open(src, "w") as fh:
            fh.write("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
        try:
            ok = subprocess.run(_command(cxx) + ["-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                                capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return ["-fopenmp"]  # no usable compiler: the build says so itself
    if ok:
        return ["-fopenmp"]
    print(f"equifast: the C++ compiler {cxx!r} does not build OpenMP code (-fopenmp, <omp.h>): "
          "building the CPU operator without OpenMP, so it runs on one thread; install libomp "
          "(libomp-dev, or `brew install libomp` with a compiler that takes -fopenmp) for all "
          "cores")
    return []


def _extension():
    # py_limited_api=True makes torch define Py_LIMITED_API itself (the module has no pybind).
    sources = ["csrc/equifast.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    openmp = _openmp()
    # -fno-trapping-math (as torch builds itself): lets gcc turn float compares and selects into
    # vector blends, e.g. the masked row max of the CPU epilogue; no code here reads FP exceptions.
    cxx = ["-O3", "-std=c++20", "-fno-trapping-math"] + openmp
    if _cuda_wanted():
        # Ampere, Hopper, and PTX that newer GPUs compile when loaded (older GPUs: a clear error
        # at the first call, see csrc/cuda)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
        return cpp_extension.CUDAExtension(
            "equifast._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx + ["-DEQUIFAST_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++20", "-DEQUIFAST_WITH_CUDA"]},
            extra_link_args=openmp,
            py_limited_api=True,
        )
    return cpp_extension.CppExtension(
        "equifast._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=openmp,
        py_limited_api=True,
    )


def _operator_buildable() -> bool:
    """Whether to build the operator at all: not with MSVC (Windows), which has none of the GCC
    vector extensions and attributes the CPU kernels are written in, and failed the install
    there; the package then runs on the PyTorch reference (``equifast.backend()``)."""
    if sys.platform == "win32":
        print("equifast: the operator's C++ needs GCC or clang (vector extensions), not MSVC: "
              "installing without it, so scores come from the slower PyTorch reference "
              "(equifast.backend() == 'reference'); build under WSL for the operator")
        return False
    _check_compiler()
    return True


if _operator_buildable():
    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension},
        options={"bdist_wheel": {"py_limited_api": "cp310"}},  # the oldest Python supported
    )
else:
    setup()
