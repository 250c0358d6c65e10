"""The examples of the docs run and print what they say: the docstrings' ``>>>`` lines
(doctest) and the README's Python example.

Docstring examples that need data, weights or a cluster this machine lacks are marked
``+SKIP`` where they stand; every other one runs here, in a fresh folder.
"""
import doctest
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

import pytest
import torch

from equifast.warning import EquifastWarning


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


def test_the_readmes_python_example_runs_and_says_true(tmp_path, monkeypatch):
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if not readme.is_file():
        pytest.skip("no README.md beside tests/")
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(), re.S)
    assert len(blocks) == 1 and '"path/to/imagenet/val"' in blocks[0]
    # its folder of images: two real photos in one class folder
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    (tmp_path / "val" / "n02123045").mkdir(parents=True)
    for name in ("chelsea", "coffee"):
        Image.fromarray(getattr(skimage_data, name)()).save(tmp_path / "val" / "n02123045" / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    scope = {}
    with pytest.warns(EquifastWarning, match="Measured 2 images, fewer than the n_images=2000"):
        exec(compile(blocks[0].replace("path/to/imagenet/val", "val"), str(readme), "exec"), scope)
    # what its comments say
    s, fx = scope["s"], scope["fx"]
    assert s.channel.shape == s.layer.shape == fx.shape[:2]
    assert torch.allclose(s.channel, torch.ones_like(s.channel), atol=1e-5)
    assert torch.equal(s.layer_index, torch.arange(fx.shape[1]).expand_as(s.layer_index))
    assert len(scope["points"]) == 11  # stem, 8 blocks, pool, final
    assert {p.name for p in tmp_path.joinpath("runs").iterdir()} >= {
        "r18.points.parquet", "r18.parts.parquet", "r18.meta.json", "r18.png", "r18-shifts.png"}
    report = scope["report"]  # the last one: efficientnet_lite0 on the folder
    assert report.meta["n_images"] == 2 and set(report.parts["part"]) == {
        "early", "middle", "late", "pool", "final"}
