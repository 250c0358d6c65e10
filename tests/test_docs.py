"""The examples in the docstrings run and print what they say (``>>>`` lines, doctest).

Examples that need data, weights or a cluster this machine lacks are marked ``+SKIP`` where
they stand; every other one runs here, in a fresh folder.
"""
import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

import pytest


def _modules():
    """The modules whose source has examples (read, not imported: collection stays cheap)."""
    names = []
    for package in ("equifast", "equifast.training", "equifast.distributed"):
        path = importlib.import_module(package).__path__
        for m in pkgutil.iter_modules(path):
            origin = importlib.util.find_spec(f"{package}.{m.name}").origin
            if not m.ispkg and origin.endswith(".py") and ">>> " in Path(origin).read_text():
                names.append(f"{package}.{m.name}")
    return sorted(names)


def test_every_package_is_searched():
    # modules of the three packages, each once: a layout change must not drop them silently
    names = _modules()
    assert {"equifast.measurement", "equifast.training.recipes", "equifast.distributed.spec"} <= set(names)
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name, tmp_path, monkeypatch, capsys):
    try:
        module = importlib.import_module(name)
    except ImportError as err:  # an optional dependency (Triton) this machine lacks
        pytest.skip(f"{name} does not import here: {err}")
    monkeypatch.chdir(tmp_path)  # examples that write runs/... write here
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, capsys.readouterr().out
