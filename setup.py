"""Build of lipkernels._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Switches (environment):
  LIPKERNELS_BUILD_CUDA=auto|0|1   auto (default) builds CUDA when the installed torch has CUDA
                                   and nvcc is found; 1 makes a missing toolchain an error; 0 skips.
  TORCH_CUDA_ARCH_LIST             honoured by torch.utils.cpp_extension (default here: 9.0).
  MAX_JOBS                         parallel compile jobs (ninja).
Install with `pip install --no-build-isolation .` so the build sees the torch you already have.
"""

import glob
import os
import sys

from setuptools import find_packages, setup


def _cuda_decision():
    """Return (build_cuda, reason) from LIPKERNELS_BUILD_CUDA, torch's CUDA and nvcc."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    wanted = os.environ.get("LIPKERNELS_BUILD_CUDA", "auto").strip().lower()
    if wanted not in ("auto", "0", "1"):
        raise SystemExit(f"LIPKERNELS_BUILD_CUDA must be auto, 0 or 1, got {wanted!r}")
    if wanted == "0":
        return False, "LIPKERNELS_BUILD_CUDA=0"
    missing = []
    if torch.version.cuda is None:
        missing.append(f"the installed torch {torch.__version__} has no CUDA")
    if CUDA_HOME is None:
        missing.append("nvcc / CUDA_HOME not found")
    if missing:
        if wanted == "1":
            raise SystemExit("LIPKERNELS_BUILD_CUDA=1 but " + "; ".join(missing))
        return False, "; ".join(missing)
    return True, f"torch CUDA {torch.version.cuda}, CUDA_HOME={CUDA_HOME}"


def _extensions():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    build_cuda, reason = _cuda_decision()
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++17", "-fopenmp"]
    include_dirs = [os.path.abspath("csrc")]
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        print(f"lipkernels: building CUDA kernels ({reason}; "
              f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})", file=sys.stderr)
        return [CUDAExtension(
            "lipkernels._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            define_macros=[("LIPKERNELS_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math",
                                                     "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )]
    print(f"lipkernels: skipping CUDA kernels ({reason}); building the C++ CPU kernels only",
          file=sys.stderr)
    return [CppExtension("lipkernels._C", sources, include_dirs=include_dirs,
                         extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    name="lipkernels",
    version="0.1.0",
    description="Fused Triton and C++/CUDA kernels for 1-Lipschitz and orthogonal layers",
    packages=find_packages(include=["lipkernels", "lipkernels.*"]),
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "numpy"],
    extras_require={"triton": ["triton>=3.2"], "bench": ["tqdm", "pytest-benchmark"]},
)
