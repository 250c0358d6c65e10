"""How long a sweep's driver and workers take to fingerprint a folder of images.

``folder_files_sha256`` (a job record's ``files_sha256``) and ``shard_fingerprint`` (what a
kept shard is reused by) on a synthetic ImageNet-val layout: ``--classes`` class folders of
``--per-class`` tiny files each (50,000 files by default), made in a temporary folder and
deleted after. Run with ``OMP_NUM_THREADS=1 python benchmarks/bench_fingerprint.py``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from results import positive  # noqa: E402


def make_folder(root: str, classes: int, per_class: int) -> None:
    for c in range(classes):
        folder = os.path.join(root, f"n{c:08d}")
        os.mkdir(folder)
        for i in range(per_class):
            with open(os.path.join(folder, f"ILSVRC2012_val_{c * per_class + i:08d}.JPEG"), "wb") as f:
                f.write(b"x" * (i % 7 + 1))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # each at least 1: --repeat 0 failed in min(), --classes 0 in the listing of an empty
    # folder, and --shards 0 timed no fingerprint at all and printed its 0.000 s
    parser.add_argument("--classes", type=positive(int), default=1000)
    parser.add_argument("--per-class", type=positive(int), default=50)
    parser.add_argument("--shards", type=positive(int), default=4)
    parser.add_argument("--repeat", type=positive(int), default=3)
    args = parser.parse_args(argv)

    from equifast.data import ImageFiles, seeded_subset
    from equifast.distributed.spec import folder_files_sha256
    from equifast.distributed.sweep import _shard, shard_fingerprint

    with tempfile.TemporaryDirectory() as root:
        make_folder(root, args.classes, args.per_class)
        n = args.classes * args.per_class
        listing = best(lambda: ImageFiles(root), args.repeat)
        print(f"{n} files, {args.classes} class folders")
        print(f"  ImageFiles(root) (the listing alone):     {listing:.3f} s")
        print(f"  folder_files_sha256 (listing + hash):     "
              f"{best(lambda: folder_files_sha256(root), args.repeat):.3f} s")
        sizes = ([("2000 images", 2000)] if n > 2000 else []) + [(f"all {n} images", None)]
        for label, size in sizes:  # 2000 of fewer were all of them, labelled 2000
            def fingerprints():  # a fresh listing, as each worker and each run has
                files = ImageFiles(root)
                subset = seeded_subset(files, size, 0)
                parts = [_shard(subset, i, args.shards) for i in range(args.shards)]
                start = time.perf_counter()
                for p in parts:
                    shard_fingerprint(p)
                return time.perf_counter() - start
            took = min(fingerprints() for _ in range(args.repeat))
            print(f"  shard_fingerprint of {args.shards} shards of {label} (listing made):"
                  f" {took:.3f} s")

if __name__ == "__main__":
    main()
