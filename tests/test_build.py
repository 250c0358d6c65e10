"""setup.py's choices, decided before anything compiles: the compiler and the CUDA toolkit."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _setup(**env):
    """Run ``setup.py --name`` (decides, builds nothing) with ``env``; (exit code, output)."""
    full = {k: v for k, v in os.environ.items() if k != "EQUIFAST_NO_CUDA"}
    full.update(env)
    done = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def _fake(tmp_path, name, script):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


def test_an_old_gcc_is_refused_with_the_fix(tmp_path):
    gcc11 = _fake(tmp_path, "g++", 'case "$1" in --version) echo "g++ (GCC) 11.4.0";; '
                                   '-dumpversion) echo 11;; esac\n')
    code, out = _setup(CXX=str(gcc11))
    assert code != 0 and "is GCC 11; the CPU kernels need GCC 12 or newer" in out


def test_an_old_gcc_behind_a_compiler_wrapper_is_refused_too(tmp_path):
    # CXX="ccache g++-11" (the build runs that command line) was taken as one program name,
    # which does not exist, so the check was skipped and the build failed deep in the kernels
    gcc11 = _fake(tmp_path, "g++-11", 'case "$1" in --version) echo "g++ (GCC) 11.4.0";; '
                                      '-dumpversion) echo 11;; esac\n')
    wrapper = _fake(tmp_path, "ccache", 'exec "$@"\n')
    code, out = _setup(CXX=f"{wrapper} {gcc11}")
    assert code != 0 and f"compiler '{wrapper} {gcc11}' is GCC 11" in out


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU build of torch never looks for a toolkit")
def test_a_cuda_11_toolkit_builds_the_cpu_operator_only(tmp_path):
    # torch 2.6 and 2.7 have CUDA 11.8 builds: with CUDA 11.8's nvcc, which has no -std=c++20,
    # the build failed in nvcc ("Value 'c++20' is not defined for option 'std'")
    _fake(tmp_path, "bin/nvcc", 'echo "Cuda compilation tools, release 11.8, V11.8.89"\n')
    code, out = _setup(CUDA_HOME=str(tmp_path))
    assert code == 0 and "(release 11.8) is older than CUDA 12" in out
    assert "building the CPU operator only" in out


def test_equifast_no_cuda_says_the_cuda_kernels_are_skipped():
    # it skipped them silently: a build log did not tell a CPU-only operator from a full one
    code, out = _setup(EQUIFAST_NO_CUDA="1")
    assert code == 0 and "EQUIFAST_NO_CUDA is set: building the CPU operator only" in out


def _extensions_on(platform):
    """The extensions setup.py gives setuptools when ``sys.platform`` is ``platform``; output."""
    code = ("import runpy, sys, setuptools, torch\n"
            "from torch.utils import cpp_extension\n"
            "seen = {}\n"
            "setuptools.setup = lambda **kw: seen.update(kw)\n"
            f"sys.platform = {platform!r}\n"
            "runpy.run_path('setup.py', run_name='__main__')\n"
            "print('extensions:', [e.name for e in seen.get('ext_modules', [])])\n")
    env = {**os.environ, "EQUIFAST_NO_CUDA": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_windows_installs_without_the_operator_and_says_so():
    # MSVC has none of the GCC vector extensions of csrc/cpu: the install failed on Windows,
    # where the package runs on the PyTorch reference without the operator
    assert "extensions: ['equifast._C']" in _extensions_on("linux")
    out = _extensions_on("win32")
    assert "extensions: []" in out and "installing without it" in out


# A compiler that reports ``version`` and compiles a file to its -o by copying it, except
# that with -fopenmp it fails as ``openmp_error`` says (or succeeds when that is empty).
def _fake_compiler(tmp_path, version, openmp_error):
    fail = f'echo "{openmp_error}" >&2; exit 1' if openmp_error else ":"
    return _fake(tmp_path, "c++", f"""case "$1" in --version) echo "{version}"; exit 0;;
-dumpversion) echo 14; exit 0;; esac
out=""; prev=""
for a in "$@"; do
  [ "$a" = "-fopenmp" ] && {{ {fail}; }}
  [ "$prev" = "-o" ] && out="$a"; prev="$a"
done
[ -n "$out" ] && : > "$out"
exit 0
""")


@pytest.mark.parametrize("error", ["clang: error: unsupported option '-fopenmp'",
                                   "fatal error: 'omp.h' file not found"])
def test_a_compiler_without_openmp_builds_without_it_and_says_so(tmp_path, error):
    # Apple's clang and a clang without libomp: -fopenmp was always passed, and the build
    # failed with the compiler's own error
    clang = _fake_compiler(tmp_path, "Apple clang version 15.0.0", error)
    code, out = _setup(CXX=str(clang), EQUIFAST_NO_CUDA="1")
    assert code == 0 and "without OpenMP, so it runs on one thread" in out


def test_a_compiler_with_openmp_builds_with_it(tmp_path):
    clang = _fake_compiler(tmp_path, "clang version 18.1.0", "")
    code, out = _setup(CXX=str(clang), EQUIFAST_NO_CUDA="1")
    assert code == 0 and "OpenMP" not in out


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU build of torch never looks for a toolkit")
def test_a_cuda_home_without_nvcc_is_an_error(tmp_path):
    code, out = _setup(CUDA_HOME=str(tmp_path))
    assert code != 0 and "which has no bin/nvcc" in out


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU build of torch never looks for a toolkit")
def test_a_toolkit_of_another_cuda_major_builds_the_cpu_operator_only(tmp_path):
    other = int(torch.version.cuda.split(".")[0]) - 1
    _fake(tmp_path, "bin/nvcc", f'echo "Cuda compilation tools, release {other}.4, V{other}.4.99"\n')
    code, out = _setup(CUDA_HOME=str(tmp_path))
    assert code == 0 and f"release {other}.4" in out and "building the CPU operator only" in out


def _tracked_files():
    """The files of this checkout that git tracks (None outside a git checkout: an sdist)."""
    try:
        done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    return [f for f in done.stdout.decode().split("\0") if f]


def _sdist(tmp_path, files):
    """Build an sdist of ``files`` copied from this checkout (as a clean clone holds them),
    without compiling anything; the names it holds, relative to its top folder."""
    import shutil
    import tarfile

    src = tmp_path / "src"
    for f in files:
        if not (ROOT / f).is_file():  # deleted in this checkout, not yet in git
            continue
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    done = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                          cwd=src, env={**os.environ, "EQUIFAST_NO_CUDA": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (archive,) = (tmp_path / "dist").glob("equifast-*.tar.gz")
    with tarfile.open(archive) as tar:
        return {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}


def test_the_sdist_holds_what_its_tests_and_the_readme_use(tmp_path):
    # the sdist had the test modules but not tests/conftest.py (their fixtures) nor
    # tests/triton_on_cpu.py, benchmarks/ (which test_benchmark_scripts runs) or the Makefile
    # of the README's `make test`: its test suite failed at collection
    tracked = _tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout (an sdist): the sdist is built from one")
    held = _sdist(tmp_path, tracked)
    # everything tracked but the repository's own files (CI script, .gitignore)
    wanted = {f for f in tracked if not (f.startswith(".") or "/." in f)}
    assert sorted(wanted - held) == []


@pytest.mark.slow
def test_a_wheel_built_from_the_sdist_installs_and_runs(tmp_path):
    # what a user of the sdist gets: it builds (CPU operator), and the installed package (not
    # this checkout) imports with its subpackages and data, and its commands run
    import json
    import tarfile

    tracked = _tracked_files()
    if tracked is None:
        pytest.skip("not a git checkout (an sdist): the sdist is built from one")
    _sdist(tmp_path, tracked)
    (archive,) = (tmp_path / "dist").glob("equifast-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "unpacked",
                       **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (src,) = (tmp_path / "unpacked").iterdir()
    env = {**os.environ, "EQUIFAST_NO_CUDA": "1"}

    def run(*cmd, timeout=900):
        done = subprocess.run([str(c) for c in cmd], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps",
        "-w", tmp_path / "wheel", src)
    (wheel,) = (tmp_path / "wheel").glob("equifast-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--system-site-packages", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--no-deps", wheel)
    info = json.loads(run(py, "-c", (
        "import json, importlib.metadata as m, pathlib\n"
        "import equifast, equifast.training, equifast.distributed\n"
        "d = pathlib.Path(equifast.distributed.__file__).parent\n"
        "print(json.dumps({'file': equifast.__file__, 'backend': equifast.backend(),\n"
        "                  'version': equifast.__version__, 'meta': m.version('equifast'),\n"
        "                  'examples': sorted(p.name for p in (d / 'examples').iterdir())}))\n")))
    assert Path(info["file"]).is_relative_to(venv) and info["backend"] == "operator"
    assert info["version"] == info["meta"]
    assert info["examples"] == sorted(Path(f).name for f in tracked
                                      if f.startswith("distributed/examples/"))
    assert "measure" in run(venv / "bin" / "equifast", "--help")
    out = run(py, "-m", "equifast.method_check", timeout=300)
    assert "layer 1: channel 1.000000  layer 1.000000" in out  # isotropic filters: exactly 1
    # the embedded default of `make demo` (weights and photos installed with the package)
    run(venv / "bin" / "equifast", "measure", "--n-images", "2", "--batch-size", "2",
        "--transforms", "rotation:90", "--device", "cpu", "--no-progress",
        "--out", tmp_path / "demo", timeout=600)
    meta = json.loads((tmp_path / "demo" / "report.json").read_text())["meta"]
    assert (meta["model"], meta["images"], meta["n_images"], meta["backend"]) == (
        "efficientnet_lite0", "embedded scikit-image photos", 2, "operator")


# imported by the package but not required: each is imported where it is used, with an error
# that says what to install
_NOT_REQUIRED = {"triton": "the opt-in EQUIFAST_CUDA_KERNEL=triton kernels (ops._triton_scores)"}


def _requirement_name(requirement: str) -> str:
    import re

    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_every_third_party_import_is_a_declared_dependency():
    # equifast.models imports safetensors (checkpoints in .safetensors) without declaring it:
    # it came only as a dependency of timm's
    import ast
    import importlib.metadata

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_requirement_name(r) for r in project["dependencies"]}
    declared |= {_requirement_name(r) for extra in project["optional-dependencies"].values()
                 for r in extra}
    imported = set()
    for folder in ("equifast", "training", "distributed"):
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"equifast"}
    distributions = importlib.metadata.packages_distributions()
    missing = sorted(f"{m} ({', '.join(distributions.get(m, ['not installed']))})"
                     for m in third_party - set(_NOT_REQUIRED)
                     if not {d.lower().replace("_", "-") for d in distributions.get(m, [m])}
                     & declared)
    assert missing == []


def test_every_subpackage_is_a_package_the_wheel_installs():
    # pyproject lists its packages: a subpackage left out (equifast.points) was in the editable
    # install of this checkout but not in a wheel, whose `import equifast` then failed
    import tomllib

    root = Path(__file__).resolve().parents[1]
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {name: root / folder for name, folder in tool["package-dir"].items()}
    found = set()
    for name, folder in folders.items():
        for init in folder.rglob("__init__.py"):
            sub = init.parent.relative_to(folder).parts
            found.add(".".join((name, *sub)))
    assert sorted(found) == sorted(tool["packages"])
