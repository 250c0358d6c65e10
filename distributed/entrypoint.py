"""Entry point of a sweep submitted to a Ray cluster.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python -m equifast.distributed.entrypoint distributed/examples/seminal.yaml --out /shared/sweeps/seminal

Inside a Ray job, ``RAY_ADDRESS`` is set, so the driver joins the cluster; run by hand it
starts a local Ray. The driver writes every result (workers only return them), so ``--out``
must be a folder that outlives the job on the node running the driver (the head node): an
absolute path or a mounted shared disk, not the temporary working directory. Same options as
``equifast sweep run``.
"""
from __future__ import annotations

import sys
from typing import List, Optional

from .cli import main as _main

__all__ = ["main"]


def main(argv: Optional[List[str]] = None) -> int:
    """``equifast sweep run`` with ``argv`` (``SPEC --out DIR [--address ...]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return _main(["run"] + argv, run_prog="python -m equifast.distributed.entrypoint")


if __name__ == "__main__":
    sys.exit(main())
