"""Fixtures shared by several test modules."""

import sys
from pathlib import Path

import pytest


@pytest.fixture
def close_stdout(tmp_path, capsys):  # torn down before capsys, which gives its stream back
    """A call that makes ``sys.stdout`` what it is once its reader (``| head -1``) has left:
    every write raises ``BrokenPipeError``; its descriptor is a spare file (the CLI points it
    at /dev/null). Called in the test itself: pytest sets capsys' stream when the test starts,
    after the fixtures; the stream is given back after the test."""
    spare = open(tmp_path / "closed-stdout", "w")
    before = []

    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            return spare.fileno()

    def close():
        before.append(sys.stdout)
        sys.stdout = ClosedPipe()

    yield close
    if before:
        sys.stdout = before[0]
    spare.close()


@pytest.fixture
def same_run():
    """A check that two training run folders hold the same final weights, bit for bit, and
    the same ``metrics.csv`` but for its timings."""
    import pandas as pd
    import torch

    def check(a: Path, b: Path) -> None:
        wa = torch.load(Path(a) / "model.pt", weights_only=True)
        wb = torch.load(Path(b) / "model.pt", weights_only=True)
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.equal(wa[k], wb[k]), k
        pd.testing.assert_frame_equal(pd.read_csv(Path(a) / "metrics.csv").drop(columns="seconds"),
                                      pd.read_csv(Path(b) / "metrics.csv").drop(columns="seconds"))

    return check


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray for a module's tests (2 CPUs); one already running is used and left to its
    owner."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        yield
        return
    # a Ray of the tests' own, even where a `ray start` cluster runs on the machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def two_labelled_and_a_stray(tmp_path, monkeypatch):
    """In ``tmp_path`` (made the working folder): ``val/`` of two ImageNet class folders with one
    image each and a stray image beside them, and ``ckpt.pt``, resnet18 weights that put every
    image in class 0 (n01440764): one of the two labelled images is right, top-1 0.5 of 2."""
    import torch
    import torchvision
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    for path in ("val/n01440764/a.png", "val/n01443537/b.png", "val/stray.png"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (len(path) * 9, 90, 30)).save(path)
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(-torch.arange(1000.0))
    torch.save(model.state_dict(), "ckpt.pt")
    return tmp_path
