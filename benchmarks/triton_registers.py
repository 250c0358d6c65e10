"""Registers and spills of the Triton kernels (``equifast/ops_triton.py``), without a GPU.

Compiles every kernel for every input type and tile choice ahead of time
(``ops_triton.compile_kernels``), assembles each with Triton's own ``ptxas -v`` and tables the
registers a thread uses, its spills and whether the tile kernel runs on ``wgmma`` (sm_90) or
``mma.sync``. Spills and register counts are what decide occupancy before any GPU is at hand.

    python benchmarks/triton_registers.py            # sm_90, writes the triton-registers section
    python benchmarks/triton_registers.py --arch 80 --no-write
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import triton

sys.path.insert(0, os.path.dirname(__file__))
from results import write_section  # noqa: E402


def ptxas_info(ptx: str, arch: int) -> dict:
    """Registers, spill bytes and stack of one kernel's PTX, from ``ptxas -v``."""
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        out = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", path, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    number = lambda pattern: int(re.search(pattern, out).group(1))  # noqa: E731
    return dict(registers=number(r"Used (\d+) registers"),
                spill_stores=number(r"(\d+) bytes spill stores"),
                spill_loads=number(r"(\d+) bytes spill loads"))


def section_name(arch: int) -> str:
    """The section of ``arch``'s table: sm_90's is the recorded one, which a run for another
    architecture replaced."""
    return "triton-registers" + (f"-sm{arch}" if arch != 90 else "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    from equifast.ops_triton import compile_kernels

    lines = ["| kernel | registers | spill stores (B) | spill loads (B) | products |", "|---|---|---|---|---|"]
    for name, ptx in compile_kernels(args.arch):
        info = ptxas_info(ptx, args.arch)
        products = ("wgmma" if "wgmma.mma_async" in ptx else "mma.sync" if "mma.sync" in ptx
                    else "FMA" if name.startswith("tiles") else "")
        lines.append(f"| {name} | {info['registers']} | {info['spill_stores']} | "
                     f"{info['spill_loads']} | {products} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if not args.no_write:
        write_section(section_name(args.arch), f"## Triton kernels: registers and spills (sm_{args.arch}, "
                      f"no GPU needed)\n\nWritten by `benchmarks/triton_registers.py` on "
                      f"{time.strftime('%Y-%m-%d')}, Triton {triton.__version__}; tile names are "
                      f"`precision-multiplication type input type BMxBNxBK`.\n\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
