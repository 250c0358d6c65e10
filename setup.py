"""Build equifast: the Python packages and the fused operator in ``csrc/``.

The C++ (CPU) operator is always built. The CUDA sources are compiled too when torch is a
CUDA build and a CUDA toolkit is found; ``EQUIFAST_NO_CUDA=1`` turns that off. Install with
``pip install --no-build-isolation -e .`` so the build uses the torch already installed.
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils import cpp_extension


def _cuda_wanted() -> bool:
    if os.environ.get("EQUIFAST_NO_CUDA", "0") not in ("", "0"):
        return False
    if torch.version.cuda is None:
        return False
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if not home and os.path.exists("/usr/local/cuda/bin/nvcc"):
        # torch's own guess (/usr/local) fails to link on some machines: prefer the toolkit.
        home = "/usr/local/cuda"
        os.environ["CUDA_HOME"] = home
        cpp_extension.CUDA_HOME = home
    return bool(home) and os.path.exists(os.path.join(home, "bin", "nvcc"))


def _extension():
    # py_limited_api=True makes torch define Py_LIMITED_API itself (the module has no pybind).
    sources = ["csrc/equifast.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -fno-trapping-math (as torch builds itself): lets gcc turn float compares and selects into
    # vector blends, e.g. the masked row max of the CPU epilogue; no code here reads FP exceptions.
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-fno-trapping-math"]
    if _cuda_wanted():
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        return cpp_extension.CUDAExtension(
            "equifast._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=[os.path.abspath("csrc")],
            extra_compile_args={"cxx": cxx + ["-DEQUIFAST_WITH_CUDA"],
                                "nvcc": ["-O3", "-std=c++20", "-DEQUIFAST_WITH_CUDA"]},
            extra_link_args=["-fopenmp"],
            py_limited_api=True,
        )
    return cpp_extension.CppExtension(
        "equifast._C",
        sources,
        include_dirs=[os.path.abspath("csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
)
