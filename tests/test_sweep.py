"""Sweeps on Ray (equifast.distributed): specs, execution, store, retries, shards, analysis.

Small on purpose (2 cores): random-init models at 32x32, 8 images, two short transform
families. The Ray fixture is shared by the module.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

ray = pytest.importorskip("ray")

import equifast as ef  # noqa: E402
from equifast.distributed import (ResultStore, SpecError, analysis, load_spec, measure_job,  # noqa: E402
                                  run_sweep)
from equifast.distributed.cli import main as sweep_main  # noqa: E402
from equifast.distributed.spec import hub_accuracy, job_id, validate_spec  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "distributed" / "examples"

MODELS = [
    {"name": "resnet18", "weights": "none", "num_classes": 2, "accuracy": 0.70},        # torchvision
    {"name": "mobilenet_v3_small", "weights": "none", "num_classes": 2, "accuracy": 0.62},
    {"name": "resnet10t", "weights": "none", "num_classes": 2, "accuracy": 0.66},       # timm
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """8 small PNGs in two class subfolders (so the sweep measures accuracy too: the models have
    two classes)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(8):
        cls = root / f"class{i % 2}"
        cls.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(cls / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """A torchvision MNIST root of 8 random grayscale digits (labels 0-7), train and test."""
    import struct

    root = tmp_path_factory.mktemp("mnist")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    images = np.random.default_rng(1).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    for split in ("train", "t10k"):
        (raw / f"{split}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, 8, 28, 28)
                                                          + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, 8)
                                                          + bytes(range(8)))
    return root


def _spec(folder, **over):
    spec = {"name": "test", "models": MODELS,
            "datasets": [{"name": "tiny", "path": str(folder), "image_size": 32}],
            "transforms": {"translation": "translation:1-2", "rotation": "rotation:90"},
            "n_images": 8, "batch_size": 8, "resources": {"num_cpus": 1}, "max_retries": 1}
    spec.update(over)
    return spec


# ---- spec ------------------------------------------------------------------------------------

def test_spec_expands_into_jobs_with_stable_ids(folder):
    spec = load_spec(_spec(folder))
    jobs = spec.jobs()
    assert len(jobs) == 3 * 2
    assert len({j.id for j in jobs}) == 6
    assert [j.id for j in load_spec(_spec(folder)).jobs()] == [j.id for j in jobs]
    # how a job runs is not part of what it measures
    other = load_spec(_spec(folder, resources={"num_cpus": 2, "num_gpus": 0.5}, shards=2,
                            max_retries=5)).jobs()
    assert [j.id for j in other] == [j.id for j in jobs]
    assert other[0].num_gpus == 0.5 and other[0].shards == 2
    # what it measures is
    assert not {j.id for j in load_spec(_spec(folder, seeds=[1])).jobs()} & {j.id for j in jobs}
    # the canonical transform names, not their spelling
    alias = load_spec(_spec(folder, transforms={"translation": "shift:1-2", "rotation": "rotation:90"}))
    assert [j.id for j in alias.jobs()] == [j.id for j in jobs]


def test_metrics_in_another_order_are_the_same_jobs(folder):
    # measured in the same passes, the same numbers: a spec listing [cosine, correlation]
    # measured every job of a sweep of [correlation, cosine] again
    jobs = load_spec(_spec(folder, metrics=["correlation", "cosine"])).jobs()
    other = load_spec(_spec(folder, metrics=["cosine", "correlation"])).jobs()
    assert [j.id for j in other] == [j.id for j in jobs]
    assert [j.metrics for j in other] == [("cosine", "correlation")] * len(jobs)  # as listed
    # the ids of a list in sorted order (the default's) are those hashed before
    assert jobs[0].id == job_id({**jobs[0].content(), "metrics": ["correlation", "cosine"]})
    assert {j.id for j in load_spec(_spec(folder, metrics=["cosine"])).jobs()}.isdisjoint(
        j.id for j in jobs)


def test_shifts_of_their_own_family_get_their_own_job_ids(folder):
    from equifast.distributed.spec import _job_content

    # a record from before labelled zero-filled shifts 'translation': it must not be skipped as done
    zero = load_spec(_spec(folder, transforms={"translation": "translation:1-2:zero"})).jobs()
    for job in zero:
        assert job.content()["families"] == ["translation-zero"] and job.id == job_id(job.content())
        before = _job_content(job.model, job.dataset, job.transforms, job.metrics, job.seed,
                              job.n_images, job.batch_size, job.vector_mode, job.amp)
        assert "families" not in before and job_id(before) != job.id
    for job in load_spec(_spec(folder)).jobs():  # circular shifts and rotations keep their ids
        assert "families" not in job.content() and job.id == job_id(job.content())


def test_tensor_cores_off_gets_its_own_job_ids(folder):
    default = [j.id for j in load_spec(_spec(folder)).jobs()]
    on = load_spec(_spec(folder, tensor_cores=True)).jobs()
    assert [j.id for j in on] == default  # the default keeps the ids of existing sweeps
    assert all(j.tensor_cores is True for j in on)
    off = load_spec(_spec(folder, tensor_cores=False))
    assert off.tensor_cores is False and off.to_dict()["tensor_cores"] is False
    jobs = off.jobs()
    assert all(j.tensor_cores is False for j in jobs)
    assert all(j.entry()["tensor_cores"] is False for j in jobs)
    assert not {j.id for j in jobs} & set(default)
    assert [j.id for j in load_spec(_spec(folder, tensor_cores=False)).jobs()] == [j.id for j in jobs]


def test_tensor_cores_in_yaml(folder, tmp_path):
    import yaml

    spec_file = tmp_path / "fp32.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(folder)) + "tensor_cores: false\n")
    jobs = load_spec(spec_file).jobs()
    assert jobs and all(j.tensor_cores is False for j in jobs)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_tensor_cores_must_be_a_boolean(folder, value):
    with pytest.raises(SpecError, match=r"tensor_cores: Expected true .* or false") as err:
        load_spec(_spec(folder, tensor_cores=value))
    assert "1 problem)" in str(err.value)


@pytest.mark.parametrize("value", ["tpu", 3])
def test_device_must_name_a_device(folder, value):
    with pytest.raises(SpecError, match=r"device: Expected null .* 'cuda:1', but got") as err:
        load_spec(_spec(folder, device=value))
    assert "1 problem)" in str(err.value)
    assert all(j.device == "cuda:1" for j in load_spec(_spec(folder, device="cuda:1")).jobs())


def test_example_specs_load(folder):
    small = load_spec(EXAMPLES / "small.yaml")
    assert len(small.jobs()) == len(small.models) * 2
    with pytest.raises(SpecError, match="imagenet/val"):  # everything but the data is valid here
        load_spec(EXAMPLES / "seminal.yaml")
    import yaml

    seminal = yaml.safe_load((EXAMPLES / "seminal.yaml").read_text())
    seminal["datasets"][0]["path"] = str(folder)
    models = {m.label: m for m in load_spec(seminal).models}
    # `--accuracy known` ranks every model, with the thesis-era (2017) ResNet weights' top-1
    assert all(m.accuracy is not None for m in models.values())
    assert (models["resnet50"].accuracy, models["resnext101_32x8d"].accuracy) == \
        pytest.approx((0.7613, 0.79312))
    assert hub_accuracy("resnet50") == pytest.approx(0.80858)


def test_the_cluster_prefetches_what_the_seminal_spec_loads(monkeypatch):
    import shlex

    import yaml

    import equifast.models

    setup = yaml.safe_load((EXAMPLES.parent / "cluster.yaml").read_text())["setup_commands"]
    (command,) = [c for c in setup if "load_model" in c]
    code = shlex.split(command)[2]  # python -c CODE
    fetched = []
    monkeypatch.setattr(equifast.models, "load_model", lambda name, weights: fetched.append((name, weights)))
    exec(code.replace("/home/ray/equifast/distributed/examples", str(EXAMPLES)), {})
    models = yaml.safe_load((EXAMPLES / "seminal.yaml").read_text())["models"]
    assert fetched == [(m["name"], m.get("weights", "default")) for m in models]
    assert ("resnet50", "IMAGENET1K_V1") in fetched


def test_named_torchvision_weights_in_a_spec(folder):
    models = [{"name": "resnet50", "label": "v1", "weights": "IMAGENET1K_V1"},
              {"name": "resnet50", "label": "v2"}]
    spec = load_spec(_spec(folder, models=models))
    # each weights' own top-1 from torchvision's metadata: 76.13 (2017 recipe), 80.858 (2022)
    assert [m.accuracy for m in spec.models] == pytest.approx([0.7613, 0.80858])
    ids = {m.label: {j.id for j in spec.jobs() if j.model.label == m.label} for m in spec.models}
    assert len(ids["v1"]) == 2 and not ids["v1"] & ids["v2"]  # other weights: other jobs
    hub = load_spec(_spec(folder, models=[dict(models[0], accuracy="hub")])).models[0]
    assert hub.accuracy == pytest.approx(0.7613)
    with pytest.raises(SpecError, match=r"weights: Expected a checkpoint file or the name of "
                                        r"torchvision weights, but 'IMAGENET1K_V3' is neither.*"
                                        r"'IMAGENET1K_V1', 'IMAGENET1K_V2', 'DEFAULT'"):
        load_spec(_spec(folder, models=[{"name": "resnet50", "weights": "IMAGENET1K_V3"}]))
    with pytest.raises(SpecError, match="has none; write the top-1 accuracy"):  # timm: no metadata
        load_spec(_spec(folder, models=[{"name": "resnet10t", "accuracy": "hub"}]))


def test_a_job_with_named_torchvision_weights_loads_them(folder, monkeypatch):
    import torchvision

    asked, real = [], torchvision.models.get_model

    def offline(name, weights=None, **kw):  # what would be downloaded; built without it
        asked.append(weights)
        return real(name, weights=None, **kw)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    spec = load_spec(_spec(folder, models=[{"name": "resnet18", "weights": "IMAGENET1K_V1"}],
                           transforms={"rotation": "rotation:90"}))
    state, info = measure_job(spec.jobs()[0], 0)  # not read as a path beside the spec
    assert info["warnings"][0].startswith("No accuracy: which of the model's 1000 classes the 2")
    assert asked == [torchvision.models.ResNet18_Weights.IMAGENET1K_V1]
    assert state.report().meta["n_images"] == 8


def test_bad_spec_fails_before_any_job(folder, tmp_path, capsys):
    bad = _spec(folder, models=MODELS + [{"name": "resnet5O"},
                                         {"name": "resnet18", "label": "ckpt", "weights": "missing.pt"}],
                datasets=[{"path": str(tmp_path / "nowhere")}],
                transforms={"translation": "translaton:1-2"})
    with pytest.raises(SpecError) as err:
        run_sweep(bad, out=tmp_path / "out")
    text = str(err.value)
    assert "no job was started" in text and "4 problems" in text
    assert "'resnet5O'" in text and "did you mean resnet50" in text
    assert "missing.pt" in text and "nowhere" in text and "translaton" in text
    assert not (tmp_path / "out").exists()
    spec_file = tmp_path / "bad.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(bad))
    assert sweep_main(["run", str(spec_file), "--out", str(tmp_path / "out")]) == 2
    assert "resnet5O" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_seeds_outside_torchs_range_fail_before_any_job(tmp_path):
    # torch takes a negative seed s as 2**64 + s (two "seeds" of one draw, averaged as two), and
    # every worker failed on one above 2**64 - 1 ("Overflow when unpacking long long")
    import torch

    draw = [torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in (-1, 2**64 - 1)]
    assert torch.equal(*draw)
    spec = {"models": [MODELS[0]], "datasets": [{"kind": "random", "image_size": 32}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 2}
    for seeds in ([0, -1], [2**64], [2**64 - 1, -1]):
        with pytest.raises(SpecError, match=r"seeds: Expected integers from 0 to 2\*\*64 - 1"):
            load_spec({**spec, "seeds": seeds})
    assert [j.seed for j in load_spec({**spec, "seeds": [0, 2**64 - 1]}).jobs()] == [0, 2**64 - 1]


def test_a_folder_or_a_file_given_for_the_other_is_said_so(tmp_path, capsys):
    # `sweep run FOLDER` and `sweep report --out FILE` said that they "do not exist"
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "a.yaml").write_text("models: []\n")
    assert sweep_main(["run", str(tmp_path / "specs")]) == 2
    assert "is a folder (holding a.yaml); give one of them" in capsys.readouterr().err
    (tmp_path / "out").write_text("x")
    assert sweep_main(["report", "--out", str(tmp_path / "out")]) == 2
    assert f"{str(tmp_path / 'out')!r} is a file" in capsys.readouterr().err


def test_the_ray_job_entry_point_runs_sweep_run_under_its_own_name(folder, tmp_path, capsys):
    from equifast.distributed import entrypoint

    with pytest.raises(SystemExit) as done:
        entrypoint.main(["--help"])
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m equifast.distributed.entrypoint ") and "spec" in usage
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text("models: [{name: resnet5O}]\n")
    assert entrypoint.main([str(spec_file), "--out", str(tmp_path / "out"), "--dry-run"]) == 2
    assert "resnet5O" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shift_as_large_as_the_images_fails_before_any_job(folder, tmp_path):
    with pytest.raises(SpecError, match=r"fit dataset 'tiny' \(image_size 32\).*32x32 image"):
        run_sweep(_spec(folder, transforms={"translation": "translation:1-32"}), out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    load_spec(_spec(folder, transforms={"translation": "translation:1-31"}))  # fits


def _one_problem(spec, *patterns):
    """The single problem a spec has, checked against each regular expression."""
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    (problem,) = err.value.problems
    for pattern in patterns:
        assert re.search(pattern, problem), problem
    return problem


def test_an_image_size_no_worker_could_hold_is_refused_in_the_spec(folder):
    # 10**6 (a typo) passed the spec and failed every job with out-of-memory on the workers
    def spec(size):
        return _spec(folder, datasets=[{"name": "noise", "kind": "random", "image_size": size}],
                     transforms={"rotation": "rotation:90"}, models=MODELS[:1])

    gib = 3 * 10**12 * 4 / 2**30  # one 3 x 10^6 x 10^6 float32 image, by hand: 11,175.9 GiB
    _one_problem(spec(10**6), r"^datasets\[0\]\.image_size: Expected at most 4096 pixels a side, "
                              rf"but got 1000000: one image of it is {gib:,.1f} GiB of float32")
    _one_problem(spec(4097), r"at most 4096 pixels a side, but got 4097: one image of it is 0\.2 GiB")
    assert load_spec(spec(4096)).datasets[0].image_size == 4096  # the bound itself is taken


def test_a_model_of_a_fixed_input_size_gets_no_other_size(folder):
    noise = {"name": "noise", "kind": "random", "image_size": 64}

    def spec(model, dataset=noise):
        return _spec(folder, models=[model], datasets=[dataset], transforms={"rotation": "rotation:90"})

    vit = {"name": "vit_b_16", "weights": "none", "num_classes": 2}
    _one_problem(spec(vit), r"^datasets\[0\]\.image_size: Expected 224, the only input size model "
                            r"'vit_b_16' takes, but dataset 'noise' has image_size 64; set 224")
    # named weights: theirs (SWAG end to end: 384); timm: the pretrained config's, tag and all
    _one_problem(spec({"name": "vit_b_16", "weights": "IMAGENET1K_SWAG_E2E_V1"},
                      dict(noise, image_size=224)), r"Expected 384, .* has image_size 224")
    _one_problem(spec({"name": "tiny", "arch": "vit_tiny_patch16_224", "weights": "none"}),
                 r"Expected 224, the only input size model 'tiny' \(vit_tiny_patch16_224\) takes")
    for name in ("mixer_s16_224", "maxvit_t", "swin_tiny_patch4_window7_224",
                 "vit_base_patch16_384.augreg_in21k_ft_in1k"):
        _one_problem(spec({"name": name, "weights": "none"}), f"model '{name}' takes")
    load_spec(spec(vit, dict(noise, image_size=224)))
    load_spec(spec(vit, {"kind": "embedded", "n_images": 2}))  # the model's own size
    load_spec(spec({"name": "swin_t", "weights": "none"}))     # torchvision's Swin pads: any size
    # the sizes the spec reads from metadata are those load_model builds at (no model is built)
    from equifast.data import input_size
    from equifast.models import input_sizes, load_model

    for name, want in (("vit_tiny_patch16_224", (224, 224)), ("resnet10t", (224, None)),
                       ("resnet18", (224, None))):
        assert input_sizes(name, None) == want
        assert input_size(load_model(name, weights=None)[1]) == want[0]


def test_a_models_resources_override_only_the_keys_it_gives(folder):
    models = [dict(MODELS[0], label="both"),
              dict(MODELS[1], label="gpu", resources={"num_gpus": 1}),
              dict(MODELS[2], label="cpu", resources={"num_cpus": 8})]
    spec = load_spec(_spec(folder, models=models, transforms={"rotation": "rotation:90"},
                           resources={"num_cpus": 4, "num_gpus": 0.5}))
    got = {j.model.label: (j.num_cpus, j.num_gpus) for j in spec.jobs()}
    assert got == {"both": (4, 0.5), "gpu": (4, 1), "cpu": (8, 0.5)}
    assert [m.get("resources") for m in spec.to_dict()["models"]] == [None, {"num_gpus": 1},
                                                                      {"num_cpus": 8}]
    assert load_spec(_spec(folder, resources={"num_gpus": 0.5})).jobs()[0].num_cpus == 1


def test_spec_errors_that_would_fail_every_job_are_found_first(folder, mnist):
    one = {"transforms": {"rotation": "rotation:90"}}
    # (a) a timm pretrained tag timm does not know (timm.is_model takes any)
    _one_problem(_spec(folder, models=[{"name": "resnet10t.c3_in1kk", "weights": "none"}], **one),
                 r"^models\[0\]\.name: Expected a pretrained tag of timm's 'resnet10t', but got "
                 r"'c3_in1kk'; its tags: c3_in1k\.$")
    # (b) an argument the torchvision dataset does not take
    data = {"torchvision": "MNIST", "root": str(mnist), "args": {"trian": False}, "image_size": 32}
    _one_problem(_spec(folder, datasets=[data], **one),
                 r"^datasets\[0\]\.args: Expected arguments of torchvision.datasets.MNIST \(train, "
                 r"transform, .*\), but got an unexpected keyword argument 'trian'; did you mean 'train'\?$")
    load_spec(_spec(folder, datasets=[dict(data, args={"train": False})], **one))
    # (b') arguments not named by strings (YAML's `args: {1: x}`): a TypeError while sorting them
    _one_problem(_spec(folder, datasets=[dict(data, args={1: "x", "train": False})], **one),
                 r"^datasets\[0\]\.args: Expected a mapping of dataset arguments by name, like "
                 r"\{train: false\}, but got \{1: 'x', 'train': False\}\.$")
    # (c) a shift as large as the model's own input size, where the dataset sets none: timm's
    # resnet10t is evaluated at 224 pixels (trained at 176), torchvision's resnet18 at 224
    shifts = {"transforms": {"t": "translation:1-224"}, "datasets": [{"kind": "embedded", "n_images": 2}]}
    _one_problem(_spec(folder, **dict(shifts, models=MODELS[2:])),
                 r"^transforms\.t: Expected transforms that fit dataset 'embedded' at the input size of "
                 r"model 'resnet10t' \(224: the dataset sets no image_size\), but translation\(224,224\)")
    load_spec(_spec(folder, **dict(shifts, transforms={"t": "translation:1-223"})))
    # (d) num_classes that the named or hub weights' classifier does not have
    _one_problem(_spec(folder, models=[{"name": "resnet18", "num_classes": 10}], **one),
                 r"^models\[0\]\.num_classes: Expected 1000 \(the classes of the default weights of "
                 r"'resnet18'\) or none, but got 10")
    _one_problem(_spec(folder, models=[{"name": "efficientnet_lite0", "num_classes": 10}], **one),
                 r"Expected 1000")
    load_spec(_spec(folder, models=[{"name": "resnet18", "weights": "IMAGENET1K_V1", "num_classes": 1000},
                                    {"name": "resnet10t", "num_classes": 10}], **one))  # timm: a new head
    # (e) a model timm builds without a classifier (its `final` would be the pooled features)
    headless = {"name": "eva02_tiny_patch14_224", "weights": "none"}
    at_its_size = dict(one, datasets=[{"kind": "embedded", "n_images": 2}])
    _one_problem(_spec(folder, models=[headless], **at_its_size),
                 r"^models\[0\]\.num_classes: Expected a classifier, but timm builds "
                 r"'eva02_tiny_patch14_224' without one")
    load_spec(_spec(folder, models=[dict(headless, num_classes=10)], **at_its_size))
    # or 0, as the refusal advises (the spec took 1 at least); torchvision has no such model
    load_spec(_spec(folder, models=[dict(headless, num_classes=0)], **at_its_size))
    _one_problem(_spec(folder, models=[{"name": "resnet18", "weights": "none", "num_classes": 0}], **one),
                 r"^models\[0\]\.num_classes: Expected `num_classes` >= 1 for torchvision's 'resnet18'")


def test_a_folder_of_splits_is_refused_in_the_spec(folder, tmp_path):
    # a dataset path holding train/ and val/ passed validation, then every job failed on its
    # worker ("Expected `images` to be the folder of one split"), after Ray had started
    import shutil

    for split in ("train", "val"):
        shutil.copytree(folder, tmp_path / "data" / split)
    problem = _one_problem(_spec(folder, datasets=[{"path": str(tmp_path / "data"), "image_size": 32}]),
                           r"^datasets\[0\]\.path: Expected `path` to be the folder of one split")
    assert f"pass {str(tmp_path / 'data' / 'val')!r}" in problem
    with pytest.raises(ValueError, match="holds the splits train, val"):  # what the worker says
        ef.data.ImageFiles(tmp_path / "data")
    (job,) = load_spec(_spec(folder, datasets=[{"path": str(tmp_path / "data" / "val"), "image_size": 32}],
                             models=MODELS[:1], transforms={"rotation": "rotation:90"})).jobs()
    assert job.dataset.path == str(tmp_path / "data" / "val")


def test_a_rotation_of_a_models_oblong_crop_is_refused_first(folder):
    # timm's Sapiens2 crops a folder's images to 1024 x 768 (input_sizes gives None for it):
    # every rotation job failed on its worker ("Expected a square image or map ...")
    from timm.models import get_pretrained_cfg

    h, w = get_pretrained_cfg("vit_base_patch16_sapiens2").input_size[1:]
    assert h != w
    model = {"name": "vit_base_patch16_sapiens2", "weights": "none", "num_classes": 0}
    one = {"models": [model], "datasets": [{"name": "tiny", "path": str(folder)}]}
    _one_problem(_spec(folder, transforms={"rotation": "rotation:90"}, **one),
                 rf"^transforms\.rotation: Expected transforms that fit dataset 'tiny' at the input "
                 rf"size of model 'vit_base_patch16_sapiens2' \({h}x{w}: the dataset sets no "
                 rf"image_size\), but expected a square image or map for rotation\(90\), but got "
                 rf"{h}x{w}; .*; here: set the dataset's image_size \(a square crop\)\.$")
    # a shift is checked against each side, the shorter one too
    _one_problem(_spec(folder, transforms={"t": f"translation:{min(h, w)}"}, **one),
                 rf"but translation\({min(h, w)},{min(h, w)}\) is as large as or larger than the "
                 rf"{h}x{w} image")
    load_spec(_spec(folder, transforms={"t": f"translation:{min(h, w) - 1}", "f": "flip"}, **one))
    square = dict(one, datasets=[{"name": "tiny", "path": str(folder), "image_size": 64}])
    load_spec(_spec(folder, transforms={"rotation": "rotation:90"}, **square))
    # noise and the embedded photos are made at the model's own crop too (as measure's are)
    for kind in ("random", "embedded"):
        made = dict(one, datasets=[{"name": "made", "kind": kind, "n_images": 2}])
        _one_problem(_spec(folder, transforms={"rotation": "rotation:90"}, **made),
                     rf"^transforms\.rotation: .* dataset 'made' at the input size of model "
                     rf"'vit_base_patch16_sapiens2' \({h}x{w}: the dataset sets no image_size\)")
        load_spec(_spec(folder, transforms={"f": "flip"}, **made))


def test_a_datasets_keys_that_its_kind_ignores_are_refused(folder, tmp_path):
    # {kind: embedded, path: ...} measured the scikit-image photos under the folder's name, and a
    # crop_pct without image_size (or of embedded data) changed nothing: both silently
    model = {"models": MODELS[:1], "transforms": {"rotation": "rotation:90"}, "n_images": 2}
    _one_problem(_spec(folder, datasets=[{"name": "val", "kind": "embedded", "path": str(folder)}], **model),
                 r"^datasets\[0\]\.path: Expected the keys of kind 'embedded', but got 'path', a key "
                 r"of kind 'folder' that 'embedded' data ignores; remove it, or set kind: folder\.$")
    _one_problem(_spec(folder, datasets=[{"path": str(folder), "args": {"train": False}}], **model),
                 r"^datasets\[0\]\.args: .* a key of kind 'torchvision' that 'folder' data ignores")
    for data in ({"kind": "embedded", "image_size": 32, "crop_pct": 0.5},
                 {"path": str(folder), "crop_pct": 0.5}):
        _one_problem(_spec(folder, datasets=[data], **model),
                     r"^datasets\[0\]\.crop_pct: Expected crop_pct only beside image_size, for a "
                     r"folder or torchvision dataset")
    (job,) = load_spec(_spec(folder, datasets=[{"path": str(folder), "image_size": 32, "crop_pct": 0.5}],
                             **model)).jobs()
    assert job.dataset.crop_pct == 0.5 and job.dataset.kind == "folder"
    (job,) = load_spec(_spec(folder, datasets=[{"name": "val", "kind": "folder", "path": str(folder)}],
                             **model)).jobs()
    assert job.dataset.path == str(folder)


def test_an_empty_list_of_transforms_is_refused(folder):
    for empty in ([], {}):
        _one_problem(_spec(folder, transforms=empty), r"^transforms: Expected ")
    # an empty `transforms:` key (null) measured translation:1-32 and rotation in silence, as
    # if the key were not there; null metrics, seeds or datasets are refused
    _one_problem(_spec(folder, transforms=None),
                 r"^transforms: Expected a mapping \{family: spec\} .*, but got None\.$")
    spec = _spec(folder, datasets=[{"path": str(folder), "image_size": 64}])
    del spec["transforms"]  # no key at all: the thesis' two families
    assert {j.family: j.transform_spec for j in load_spec(spec).jobs()} == {
        "translation": "translation:1-32", "rotation": "rotation"}


def test_a_metric_that_is_a_mapping_is_a_problem_of_the_spec(folder, tmp_path, capsys):
    # `metrics: [{correlation: 1}]` raised "TypeError: unhashable type: 'dict'" out of the
    # distinct-metrics check, a traceback from `sweep run` instead of the spec's problems
    _one_problem(_spec(folder, metrics=[{"correlation": 1}]),
                 r"^metrics: Expected each metric to be one of \['correlation', 'cosine'\], "
                 r"but got \{'correlation': 1\}\.$")
    _one_problem(_spec(folder, metrics=["cosine", "cosine"]), r"^metrics: Expected distinct metrics")
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text("metrics: [{correlation: 1}]\n" + "".join(
        f"{k}: {json.dumps(v)}\n" for k, v in _spec(folder).items()))
    assert sweep_main(["run", str(spec_file), "--dry-run"]) == 2
    assert "metrics: Expected each metric" in capsys.readouterr().err


def test_a_label_or_dataset_name_that_is_no_text_is_refused(folder):
    # `label: [r18]` (or `name: {a: 1}`) was the model "['r18']" in every table and figure
    model = dict(MODELS[0])
    for bad in (["r18"], {"a": 1}, True):
        _one_problem(_spec(folder, models=[dict(model, label=bad)]),
                     rf"^models\[0\]\.label: Expected a name \(text\), but got {re.escape(repr(bad))}\.$")
        _one_problem(_spec(folder, models=[dict(model, name=bad, arch="resnet18")]),
                     r"^models\[0\]\.name: Expected a name \(text\)")
        _one_problem(_spec(folder, datasets=[{"name": bad, "path": str(folder), "image_size": 32}]),
                     rf"^datasets\[0\]\.name: Expected a name \(text\), but got {re.escape(repr(bad))}\.$")
    # a number is its text (YAML's `label: 2024`), as a family's name
    spec = load_spec(_spec(folder, models=[dict(model, label=2024)],
                           datasets=[{"name": 7, "path": str(folder), "image_size": 32}]))
    assert {(j.model.label, j.dataset.label) for j in spec.jobs()} == {("2024", "7")}


def test_a_transform_family_without_a_name_is_refused(folder):
    # {"": rotation} was a job "resnet18 / tiny /  / seed 0" and an empty cell in the tables'
    # CSV files; YAML's `~: rotation` a family named 'None'
    for name in ("", "  ", None):
        _one_problem(_spec(folder, transforms={name: "rotation:90", "flip": "flip"}),
                     rf"^transforms: Expected each family's name .* to be non-empty, but got "
                     rf"{re.escape(repr(name))} for 'rotation:90'")
    (job,) = [j for j in load_spec(_spec(folder, transforms={90: "rotation:90"})).jobs()][:1]
    assert job.family == "90"  # a number is a name (YAML's `90: rotation:90`)


def test_a_sweeps_out_inside_a_folder_dataset_is_refused(folder, tmp_path, capsys):
    # its report's figures were measured as images of the dataset by the next run, and its
    # folder taken for a class (the accuracy dropped as a class folder without a label)
    import yaml

    inside = folder / "results"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(folder, out=str(inside))))
    said = f"Expected the results folder outside the images of dataset 'tiny', but {str(inside)!r} lies in its path"
    with pytest.raises(ValueError, match=re.escape(said)):
        run_sweep(_spec(folder), out=inside)
    for argv in (["run", str(spec_file)], ["run", str(spec_file), "--dry-run"],
                 ["run", str(spec_file), "--out", str(folder)]):
        assert sweep_main(argv) == 2
        assert "Expected the results folder outside the images of dataset 'tiny'" in capsys.readouterr().err
    assert not inside.exists() and sorted(p.name for p in folder.iterdir()) == ["class0", "class1"]


def test_a_folder_of_users_files_is_never_a_sweeps_out(folder, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "points.csv").write_text("my own table")  # a name the sweep's tables take
    with pytest.raises(FileExistsError, match=r"sweep results folder .* holds other files: \['points.csv'\]"):
        run_sweep(_spec(folder), out=mine)
    spec_file = tmp_path / "spec.yaml"
    import yaml

    spec_file.write_text(yaml.safe_dump(_spec(folder)))
    assert sweep_main(["run", str(spec_file), "--out", str(mine)]) == 2
    assert "points.csv" in capsys.readouterr().err
    # --dry-run listed 8 pending jobs there, exit 0, where the run itself refuses the folder
    assert sweep_main(["run", str(spec_file), "--out", str(mine), "--dry-run"]) == 2
    assert "points.csv" in capsys.readouterr().err
    assert sweep_main(["run", str(spec_file), "--out", str(mine / "points.csv")]) == 2  # a file
    assert "is a file" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["points.csv"]
    assert (mine / "points.csv").read_text() == "my own table"
    # a spec.json of the user's own (an OpenAPI file) made the folder a store: all replaced
    (mine / "spec.json").write_text('{"openapi": "3.0.0"}')
    with pytest.raises(FileExistsError, match=r"holds other files: \['points.csv', 'spec.json'\] "
                                              r"\(its spec.json does not mark a sweep results folder\)"):
        run_sweep(_spec(folder), out=mine)
    assert (mine / "spec.json").read_text() == '{"openapi": "3.0.0"}'


def test_a_users_folder_holding_a_records_folder_is_no_sweeps_out(folder, tmp_path):
    mine = tmp_path / "project"
    (mine / "records").mkdir(parents=True)
    (mine / "records" / "patients.txt").write_text("my data")
    (mine / "jobs.csv").write_text("my,own,jobs")
    with pytest.raises(FileExistsError, match=r"holds other files: \['jobs.csv', 'records'\]"):
        run_sweep(_spec(folder), out=mine)
    assert (mine / "jobs.csv").read_text() == "my,own,jobs"
    assert sorted(p.name for p in mine.rglob("*")) == ["jobs.csv", "patients.txt", "records"]
    # a store's own records/ (job ids, and a write in flight) is one, even without spec.json
    store = ResultStore(tmp_path / "store")
    store.write_record({"id": "0123456789abcdef", "status": "failed", "job": {}})
    (store.records_dir / ".0123456789abcdef.json.12.89abcdef.tmp").write_text("")
    (store.root / "jobs.csv").write_text("the store's own table")
    store.check_folder()


def test_checkpoint_path_is_relative_to_the_spec(folder, tmp_path):
    from equifast.models import default_preprocess, load_model

    torch.manual_seed(3)
    model, _ = load_model("resnet10t", weights=None, num_classes=2)
    (tmp_path / "ckpt").mkdir()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt" / "r10.pt")
    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(
        folder, models=[{"name": "mine", "arch": "resnet10t", "weights": "ckpt/r10.pt", "num_classes": 2,
                         "accuracy": 91}],
        transforms={"rotation": "rotation:90"}, n_images=4, batch_size=4)))
    (job,) = load_spec(spec_file).jobs()
    assert job.model.label == "mine" and job.model.accuracy == pytest.approx(0.91)
    assert job.id == job_id(job.content())
    # the checkpoint retrained in place: another job (a rerun must not skip it as done)
    torch.save({"state_dict": {k: v + 1 for k, v in model.state_dict().items()}}, tmp_path / "ckpt" / "r10.pt")
    (retrained,) = load_spec(spec_file).jobs()
    assert retrained.id != job.id and retrained.id == job_id(retrained.content())
    torch.save({"state_dict": model.state_dict()}, tmp_path / "ckpt" / "r10.pt")
    state, info = measure_job(job)
    ref = ef.measure(model, str(folder), transforms=ef.parse_transforms("rotation:90"), batch_size=4,
                     n_images=4, preprocess=default_preprocess(32))
    _assert_same(state.report().points, ref.points)
    assert info["n_images"] == 4


def test_model_ready_images_are_measured_without_a_preprocess_warning(folder):
    # embedded photos and random images come as tensors already preprocessed: handing the
    # model's preprocessing to measure as well made every such job warn that it was not applied
    models = [{"name": "resnet18", "weights": "none", "num_classes": 2}]
    for data in ({"kind": "random", "image_size": 32}, {"kind": "embedded", "image_size": 32}):
        (job,) = load_spec(_spec(folder, models=models, datasets=[data], n_images=2, batch_size=2,
                                 transforms={"rotation": "rotation:90"})).jobs()
        state, info = measure_job(job)
        assert info["n_images"] == 2 and state.report().points.shape[0] > 0
        assert not [w for w in info["warnings"] if "preprocess" in w], info["warnings"]


def test_embedded_photos_of_a_job_are_cut_as_they_are_read(folder):
    # a job of n_images embedded photos cut them all first ([n, 3, S, S]: 2000 at 224 px, 1.2 GB)
    from equifast import data
    from equifast.distributed.sweep import job_inputs
    from equifast.models import default_preprocess

    models = [{"name": "resnet18", "weights": "none", "num_classes": 2}]
    (job,) = load_spec(_spec(folder, models=models, datasets=[{"kind": "embedded", "image_size": 32}],
                             n_images=3, batch_size=2, transforms={"rotation": "rotation:90"})).jobs()
    images, pre = job_inputs(job)
    assert isinstance(images, data.EmbeddedPhotos) and len(images) == 3
    want = data.normalise_like(data.embedded_photos(3, size=32, seed=job.seed), default_preprocess(32))
    assert torch.equal(torch.stack([images[i] for i in range(3)]), want)
    state, _ = measure_job(job, 1, 2)  # a shard: the second half of the same crops
    torch.manual_seed(job.seed)
    model = ef.load_model("resnet18", weights=None, num_classes=2)[0]
    alone = ef.measure(model, want[2:], transforms="rotation:90", return_state=True)
    pd.testing.assert_frame_equal(state.report().points, alone.report().points)


def test_a_jobs_warnings_are_kept_in_its_record_not_printed_by_the_worker(folder):
    import warnings

    from equifast.distributed.sweep import job_record

    models = [{"name": "resnet18", "weights": "none", "num_classes": 3}]  # 2 class folders
    (job,) = load_spec(_spec(folder, models=models, transforms={"rotation": "rotation:90"})).jobs()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        results = [measure_job(job, 0, 2), measure_job(job, 1, 2)]
    said = ("No accuracy: which of the model's 3 classes the 2 class folders (class0, class1) are "
            "is unknown (not one folder per class, nor folders numbered 0 to 2, nor ImageNet-1k "
            "synsets for 1000 classes).")
    assert [info["warnings"] for _, info in results] == [[said], [said]]
    assert job_record(job, results)["warnings"] == [said]  # once for the job


def _mnist_job(folder, mnist, model):
    dataset = {"name": "digits", "torchvision": "MNIST", "root": str(mnist), "args": {"train": False},
               "image_size": 32}
    (job,) = load_spec(_spec(folder, models=[model], datasets=[dataset],
                             transforms={"rotation": "rotation:90"})).jobs()
    return job


def _raw_files(root, name):
    """Empty stand-ins of the raw files of torchvision's ``name`` (MNIST's kin) under ``root``,
    where its class looks: a spec with them validates (the data gone from a worker later)."""
    import torchvision

    raw = root / name / "raw"
    raw.mkdir(parents=True)
    cls = getattr(torchvision.datasets, name)
    files = [raw / os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
    for path in files:
        path.write_bytes(b"")
    return files


def test_a_torchvision_root_without_the_data_says_to_put_it_there_not_to_download(folder, tmp_path):
    # torchvision's own error advises download=True, which a sweep refuses; said by the spec's
    # check where the driver sees the root, and by the job where a worker's copy lacks the data
    with pytest.raises(SpecError, match=r"datasets\[0\]\.root: Expected the files of "
                                        r"torchvision.datasets.MNIST under .*MNIST reads its idx files "
                                        r"uncompressed .*never download"):
        _mnist_job(folder, tmp_path, {"name": "resnet10t", "weights": "none", "num_classes": 10})
    files = _raw_files(tmp_path, "MNIST")
    job = _mnist_job(folder, tmp_path, {"name": "resnet10t", "weights": "none", "num_classes": 10})
    for path in files:
        path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        measure_job(job)
    message = str(err.value)
    assert "download=True" not in message and str(tmp_path) in message
    assert re.search(r"torchvision.datasets.MNIST\{'train': False\} under .*never download", message)


def test_a_fashion_mnist_root_of_gz_files_says_where_torchvision_reads_them(folder, tmp_path):
    # the .gz idx files lie directly in root (as /usr/share/datasets/fashion-mnist, which
    # `equifast train` reads): the error said "put the data under that root", where it was
    import torchvision

    from equifast.distributed.sweep import job_inputs

    names = [os.path.basename(url) for url, _ in torchvision.datasets.FashionMNIST.resources]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    dataset = {"name": "fm", "torchvision": "FashionMNIST", "root": str(tmp_path),
               "args": {"train": False}, "image_size": 32}
    spec = _spec(folder, models=MODELS[:1], datasets=[dataset], transforms={"rotation": "rotation:90"})
    # torchvision's own answer of where an instance at this root reads its files
    raw = torchvision.datasets.MNIST.raw_folder.fget(type("FashionMNIST", (), {"root": str(tmp_path)})())
    with pytest.raises(SpecError) as err:  # the driver sees the root: before anything runs
        load_spec(spec)
    assert f"from {raw!r}, not .gz files in root itself; sweeps never download" in str(err.value)
    files = _raw_files(tmp_path, "FashionMNIST")
    (job,) = load_spec(spec).jobs()
    for path in files:  # a worker whose copy holds the .gz files only
        path.unlink()
    with pytest.raises(FileNotFoundError) as err:
        job_inputs(job)
    message = str(err.value)
    assert f"from {raw!r}" in message and "never download" in message
    assert all(os.path.splitext(name)[0] in message for name in names)


def test_a_torchvision_error_naming_a_path_with_dots_is_kept_whole(folder, tmp_path):
    # its first '.' ended the message: "The file /tmp/places" of /tmp/places.v2/...
    from equifast.distributed.sweep import job_inputs

    root = tmp_path / "places.v2"
    root.mkdir()
    dataset = {"name": "places", "torchvision": "Places365", "root": str(root),
               "args": {"split": "val", "small": True}, "image_size": 32}
    (job,) = load_spec(_spec(folder, models=MODELS[:1], datasets=[dataset],
                             transforms={"rotation": "rotation:90"})).jobs()
    with pytest.raises(FileNotFoundError) as err:
        job_inputs(job)
    message = str(err.value)
    missing = os.path.join(str(root), "categories_places365.txt")
    assert f"(The file {missing} does not exist or is corrupted); sweeps never" in message
    assert "download=True" not in message and "never download" in message


def test_a_grayscale_torchvision_dataset_is_measured_in_rgb(folder, mnist):
    import torchvision

    from equifast.distributed.sweep import job_record
    from equifast.models import default_preprocess, load_model

    job = _mnist_job(folder, mnist, {"name": "resnet10t", "weights": "none", "num_classes": 10})
    rec = job_record(job, [measure_job(job)])
    # as the same images turned to RGB and labelled by hand, measured in this process
    digits = torchvision.datasets.MNIST(str(mnist), train=False)
    prep = default_preprocess(32)
    x = torch.stack([prep(img.convert("RGB")) for img, _ in digits])
    torch.manual_seed(0)
    model, _ = load_model("resnet10t", weights=None, num_classes=10)
    ref = ef.measure(model, x, labels=torch.arange(8), transforms=ef.parse_transforms("rotation:90"),
                     batch_size=8)
    _assert_same(pd.DataFrame(rec["points"]), ref.points)
    # MNIST's 10 classes are the model's 10: its labels count
    assert rec["accuracy_source"] == "measured" and rec["accuracy_measured"] == ref.meta["accuracy"]
    assert rec["n_images"] == 8 and not rec["warnings"]


def test_a_torchvision_datasets_labels_count_only_for_a_model_of_its_classes(folder, mnist, monkeypatch):
    import torchvision

    from equifast.distributed.sweep import job_inputs, job_record

    # an ImageNet classifier (1000 classes) on MNIST's 10: no top-1, the known accuracy instead
    job = _mnist_job(folder, mnist, {"name": "resnet10t", "weights": "none", "accuracy": 0.7})
    rec = job_record(job, [measure_job(job)])
    assert rec["accuracy_measured"] is None
    assert (rec["accuracy"], rec["accuracy_source"]) == (0.7, "known")
    assert rec["warnings"] == ["No accuracy: which of the model's 1000 classes the 10 class folders "
                               "(0 - zero, 1 - one, 2 - two, ...) are is unknown (not one folder per "
                               "class, nor folders numbered 0 to 999, nor ImageNet-1k synsets for "
                               "1000 classes)."]
    # a dataset that names no classes: no labels at all
    monkeypatch.setattr(torchvision.datasets.MNIST, "classes", [])
    with pytest.warns(UserWarning, match="torchvision's MNIST names no classes"):
        images, _ = job_inputs(job)
    assert [images[i][1] for i in range(len(images))] == [-1] * 8


# ---- store -----------------------------------------------------------------------------------

def test_store_records_are_atomic_and_unique(tmp_path):
    store = ResultStore(tmp_path)
    store.write_record({"id": "abc", "status": "failed", "error": "boom", "job": {}})
    store.write_record({"id": "abc", "status": "ok", "job": {}, "points": [], "parts": [],
                        "x": float("nan")})
    assert [p.name for p in (tmp_path / "records").iterdir()] == ["abc.json"]
    assert store.get("abc")["status"] == "ok" and store.get("abc")["x"] is None
    (tmp_path / "records" / "half.json").write_text('{"id": "half", "sta')  # a torn write reruns
    assert store.states() == {"abc": "ok"}
    with pytest.raises(ValueError, match="status 'ok' or 'failed'"):
        store.write_record({"id": "x", "status": "done"})


def test_tables_hold_the_saved_specs_jobs_only(tmp_path):
    # a sweep of other settings in the same folder makes other jobs: their records stay on disk,
    # but must not be averaged in with the current spec's as if they were more seeds
    store = ResultStore(tmp_path)
    part = [{"part": "early", "family": "rotation", "metric": "correlation", "channel": 0.5,
             "layer": 0.6}]
    for jid in ("old", "new"):
        store.write_record({"id": jid, "status": "ok", "points": [], "parts": part,
                            "job": {"model": {"label": "m"}, "family": "rotation", "seed": 0}})
    store.write_spec({"models": [{"label": "m"}]}, ["new"])
    assert list(store.tables()["parts"]["job_id"]) == ["new"]
    assert list(store.tables()["jobs"]["job_id"]) == ["new"]
    assert sorted(store.tables(all_records=True)["parts"]["job_id"]) == ["new", "old"]


def _finished_records(spec, out):
    """An ``ok`` record for every job of ``spec`` (no accuracy measured), as if a sweep had run:
    a rerun of ``spec`` then skips every job and starts no Ray."""
    store = ResultStore(out)
    labels = [m.label for m in spec.models]
    for job in spec.jobs():
        i = labels.index(job.model.label)
        parts = [{"part": p, "family": job.family, "metric": "correlation",
                  "channel": 0.1 * (i + 1) + 0.01 * k, "layer": 0.5 - 0.1 * i}
                 for k, p in enumerate(("early", "final"))]
        store.write_record({"id": job.id, "status": "ok", "job": job.entry(), "points": [],
                            "parts": parts})
    return store


def test_relabelled_model_shows_its_new_label_and_accuracy(folder, tmp_path):
    # ids ignore labels and accuracies, so a rerun skips every job (no Ray starts); the tables
    # must still show each job's model as the latest spec names it
    out = tmp_path / "sweep"
    _finished_records(load_spec(_spec(folder)), out)
    models = [dict(MODELS[0], accuracy=0.99, label="r18-renamed")] + MODELS[1:]
    relabelled = load_spec(_spec(folder, models=models))
    again = run_sweep(relabelled, out=out, progress=False)
    assert again.ran == 0 and again.skipped == 6
    want = {j.id: (j.model.label, j.model.accuracy) for j in relabelled.jobs()}
    for name in ("jobs", "parts"):
        table = pd.read_csv(out / f"{name}.csv")
        got = {r.job_id: (r.model, r.accuracy_known) for r in table.itertuples()}
        assert got == {jid: want[jid] for jid in got} and set(got) == set(want)
    scores = analysis.part_scores(out, accuracy="known")
    assert dict(zip(scores["model"], scores["accuracy"])) == {
        m.label: pytest.approx(m.accuracy) for m in relabelled.models}


def test_another_spec_in_the_same_folder_is_said_and_its_records_kept(folder, tmp_path):
    # spec.json was replaced without a word: the first sweep's jobs left status and the report
    out = tmp_path / "sweep"
    first = load_spec(dict(_spec(folder), name="first"))
    _finished_records(first, out)
    run_sweep(first, out=out, progress=False)  # its spec saved; nothing runs
    other = load_spec(dict(_spec(folder, models=MODELS[:1]), name="other"))
    gone = {j.id for j in first.jobs()} - {j.id for j in other.jobs()}
    assert len(gone) == 4
    with pytest.warns(UserWarning, match=r"holds sweep 'first', and 4 of its finished jobs are not "
                                         r"jobs of this spec \('other'\).*Their records are kept"):
        assert run_sweep(other, out=out, progress=False).skipped == 2
    assert ResultStore(out).read_spec()["spec"]["name"] == "other"
    assert gone <= ResultStore(out).finished()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same spec again, or the first one back: nothing to say
        run_sweep(other, out=out, progress=False)
        run_sweep(first, out=out, progress=False)


def test_renamed_dataset_and_families_show_their_new_names(folder, tmp_path):
    # ids ignore names, so a rerun with the dataset renamed and the two transform sets' family
    # names swapped skips every job (no Ray starts): the tables kept each record's old names,
    # so "translation" averaged the rotations and "rotation" the shifts
    out = tmp_path / "sweep"
    first = load_spec(_spec(folder))
    _finished_records(first, out)
    renamed = load_spec(_spec(folder, datasets=[{"name": "tiny-32", "path": str(folder), "image_size": 32}],
                              transforms={"rotation": "translation:1-2", "translation": "rotation:90"}))
    assert {j.id for j in renamed.jobs()} == {j.id for j in first.jobs()}
    again = run_sweep(renamed, out=out, progress=False)
    assert again.ran == 0 and again.skipped == 6
    want = {j.id: ("tiny-32", j.family, j.transforms) for j in renamed.jobs()}
    for name in ("jobs", "parts"):
        table = pd.read_csv(out / f"{name}.csv")
        got = {r.job_id: (r.dataset, r.transforms) for r in table.itertuples()}
        assert got == {jid: want[jid][:2] for jid in got} and set(got) == set(want)
    # the family named "rotation" is now the shifts: its parts are the shift jobs' parts
    parts = ResultStore(out).tables()["parts"]
    shifts = {j.id for j in renamed.jobs() if j.transforms[0].startswith("translation")}
    assert set(parts.loc[parts["transforms"] == "rotation", "job_id"]) == shifts
    assert set(parts.loc[parts["transforms"] == "rotation", "family"]) == {"translation"}


def test_wrong_ray_address_fails_fast(folder, tmp_path, capsys):
    # ray.init retries an address where nothing listens for many minutes
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the sweep would use it, not the address")
    import socket
    import time
    with socket.socket() as s:  # a port that refuses connections: bound, never listening
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        spec = tmp_path / "spec.yaml"
        spec.write_text(json.dumps(_spec(folder)))
        t0 = time.time()
        code = sweep_main(["run", str(spec), "--out", str(tmp_path / "sweep"), "--address", address])
        elapsed = time.time() - t0
    err = capsys.readouterr().err.strip()
    assert code == 2 and elapsed < 10 and not ray.is_initialized()
    assert not (tmp_path / "sweep").exists()  # nothing written for a sweep that cannot run
    assert len(err.splitlines()) == 1 and f"Expected a Ray cluster at '{address}'" in err, err


def test_addresses_that_are_no_cluster_fail_before_anything_is_written(folder, tmp_path, capsys):
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the sweep would use it, not the address")
    import http.server
    import threading

    # the dashboard's port accepts connections, and Ray would retry it for minutes
    class Quiet(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # not on the stderr the test reads
            pass

    # (Ray's own ports, GCS 6379 and client 10001, answer no HTTP: checked on `ray start`)
    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dashboard = f"127.0.0.1:{server.server_address[1]}"
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec(folder)))
    try:
        for address, says in ((dashboard, "is the Ray dashboard's"),
                              (f"http://{dashboard}", "is the Ray dashboard's"),
                              ("garbage", "HOST:PORT, ray://HOST:PORT, 'auto' or 'local'")):
            code = sweep_main(["run", str(spec), "--out", str(tmp_path / "sweep"), "--address", address])
            err = capsys.readouterr().err.strip()
            assert code == 2 and len(err.splitlines()) == 1 and says in err, err
            assert not (tmp_path / "sweep").exists() and not ray.is_initialized()
    finally:
        server.shutdown()
        server.server_close()


def test_jobs_a_local_ray_cannot_run_are_one_line_error_not_a_hang(folder, tmp_path, capsys):
    if ray.is_initialized():
        pytest.skip("another test's Ray is running: the sweep would use it, not start its own")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec(folder, models=MODELS[:2], transforms={"rotation": "rotation:90"},
                                     resources={"num_cpus": 1, "num_gpus": 0.5})))
    # Ray would wait for a GPU for ever: the local Ray of this machine has none
    code = sweep_main(["run", str(spec), "--out", str(tmp_path / "sweep"), "--num-cpus", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.endswith("but it has 0 GPU: 2 job(s) (mobilenet_v3_small, resnet18) ask 0.5 GPU "
                        "per task; lower `resources:` in the spec (num_gpus: 0 runs on CPUs) "
                        "or run on a cluster that has them."), err
    assert not (tmp_path / "sweep").exists() and not ray.is_initialized()


def test_a_cluster_that_may_grow_is_warned_of_jobs_it_cannot_run_yet(folder):
    from equifast.distributed.sweep import _check_resources

    jobs = load_spec(_spec(folder, resources={"num_cpus": 2}, models=[dict(MODELS[0], resources={
        "num_cpus": 4})])).jobs()
    _check_resources(jobs, {"CPU": 4.0})
    with pytest.warns(UserWarning, match=r"it has 2 CPU: 2 job\(s\) \(resnet18\) ask 4 CPU per task "
                                         r"now; Ray waits until an autoscaling cluster adds them"):
        _check_resources(jobs, {"CPU": 2.0}, can_grow=True)


def test_a_local_ray_is_the_sweeps_own_even_beside_a_running_cluster(monkeypatch):
    from equifast.distributed.sweep import _init_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _init_ray(None, 3) and calls.pop() == {"address": "local", "include_dashboard": False,
                                                   "num_cpus": 3}  # address=None would join one
    assert _init_ray("auto", 3) and calls.pop() == {"address": "auto"}  # the cluster's own CPUs
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # as under `ray job submit`
    assert _init_ray(None, None) and calls.pop() == {"address": None}


def test_a_sweep_already_writing_the_folder_is_one_line(ray_session, folder, tmp_path, capsys):
    import subprocess
    import sys

    from equifast.cli import main as equifast_main
    from equifast.distributed.store import ResultStore

    out = tmp_path / "sweep"
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(_spec(folder)))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir()
        (out / "sweep.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": other.pid}))
        assert equifast_main(["sweep", "run", str(spec), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"pid {other.pid}" in err and "holds" in err, err
        assert sorted(p.name for p in out.iterdir()) == ["sweep.lock"]  # nothing else written
    finally:
        other.kill()
        other.wait()
    # its process gone: the lock is stale, and taken over; the record it was writing when
    # killed is removed (they were kept forever), a finished one and a user's file kept
    (out / "records").mkdir()
    half = out / "records" / f".{'a' * 16}.json.{other.pid}.0123abcd.tmp"
    half.write_text("{")
    (out / "records" / f"{'b' * 16}.json").write_text("{}")
    (out / "records" / "notes.tmp").write_text("mine")
    store = ResultStore(out)
    store.lock()
    assert json.loads((out / "sweep.lock").read_text())["pid"] == os.getpid()
    # created as a data file, as open() makes them (os.open's default mode made it executable)
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "sweep.lock").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in (out / "records").iterdir()) == [f"{'b' * 16}.json", "notes.tmp"]
    store.unlock()


def test_a_lock_being_taken_is_not_taken_over(tmp_path):
    # a lock another driver has created but not yet written read as {} and was deleted as stale
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.lock").write_text("")
    store = ResultStore(out)
    with pytest.raises(BlockingIOError, match="a sweep starting holds"):
        store.lock()
    old = time.time() - 60  # its driver died before writing it: stale
    os.utime(out / "sweep.lock", (old, old))
    store.lock()
    assert json.loads((out / "sweep.lock").read_text())["pid"] == os.getpid()
    store.unlock()


def test_a_second_driver_is_refused_before_it_starts_ray(folder, tmp_path, monkeypatch):
    # it was refused only at lock(), after ray.init (10-20 s, and a local Ray's processes)
    from equifast.distributed import sweep as sweep_mod

    out = tmp_path / "sweep"
    out.mkdir()
    (out / "sweep.lock").write_text(json.dumps({"host": "another-host", "pid": 4242}))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    started = []
    monkeypatch.setattr(sweep_mod, "_check_reachable", lambda address: None)
    monkeypatch.setattr(sweep_mod, "_init_ray", lambda *a: started.append(a) or True)
    with pytest.raises(BlockingIOError, match="pid 4242 on another-host holds"):
        run_sweep(_spec(folder), out=out, progress=False)
    assert started == [] and sorted(p.name for p in out.iterdir()) == ["sweep.lock"]
    ResultStore(out / "free").check_unlocked()  # no lock: nothing to say, nothing written
    assert not (out / "free").exists()


@pytest.mark.skipif(not os.path.isfile("/proc/self/stat"), reason="process start times from /proc")
def test_status_of_a_sweep_whose_drivers_process_id_is_taken_since_says_stopped(tmp_path):
    # the driver killed and its process id reused by a later process: "running" for ever
    import subprocess
    import sys
    import time

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        store = ResultStore(tmp_path)
        for started, state in ((time.time() + 60, "running"), (time.time() - 3600, "stopped")):
            (tmp_path / "status.json").write_text(json.dumps(
                {"sweep": "s", "state": "running", "pid": other.pid, "host": socket.gethostname(),
                 "started_at": started, "running_ids": []}))
            assert store.state() == state
    finally:
        other.kill()
        other.wait()


def test_status_of_a_sweep_whose_driver_is_gone_says_stopped(tmp_path, capsys, monkeypatch):
    import subprocess
    import sys

    from equifast.cli import main as equifast_main

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"sweep": "s", "state": "running", "pid": gone.pid,
                                                "host": socket.gethostname(), "running_ids": []}))
    assert sweep_main(["status", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "stopped"
    assert sweep_main(["status", "--out", str(out)]) == 0
    assert f"s ({out}): stopped (its driver, pid {gone.pid}" in capsys.readouterr().out
    # a file given as --out is said to be one; Ctrl-C is one line and exit status 130
    (tmp_path / "spec.yaml").write_text("name: x")
    assert sweep_main(["status", "--out", str(tmp_path / "spec.yaml")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    # report said "Expected finished jobs in the sweep" of a folder that holds no sweep
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    assert sweep_main(["report", "--out", str(tmp_path / "mine")]) == 2
    assert f"{str(tmp_path / 'mine')!r} holds no sweep's files" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from equifast.distributed.store import ResultStore
    monkeypatch.setattr(ResultStore, "counts", interrupted)
    for main in (sweep_main, lambda argv: equifast_main(["sweep"] + argv)):
        assert main(["status", "--out", str(out)]) == 130
        assert capsys.readouterr().err.strip().endswith("interrupted")


def test_status_lists_the_failed_jobs_of_the_sweep_only(tmp_path, capsys):
    store = ResultStore(tmp_path / "sweep")
    job = {"model": {"label": "m"}, "dataset": {"label": "d"}, "family": "rotation", "seed": 0}
    store.write_spec({"name": "now"}, ["aaaa", "bbbb"], {"aaaa": "m", "bbbb": "m"})
    store.write_record({"id": "aaaa", "status": "ok", "job": job, "points": [], "parts": []})
    store.write_record({"id": "bbbb", "status": "failed", "job": job, "error": "ValueError: ours"})
    store.write_record({"id": "old1", "status": "failed", "job": job, "error": "RuntimeError: an "
                        "earlier spec's"})  # not a job of the saved spec: not counted, not listed
    assert sweep_main(["status", "--out", str(store.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:] == ["  finished 1/2, running 0, failed 1, pending 0",
                         "  failed bbbb m / d / rotation / seed 0: ValueError: ours"]
    # a damaged record: its job was pending, and the damage said nowhere
    (store.records_dir / ("c" * 16 + ".json")).write_text("{bad")
    store.write_spec({"name": "now"}, ["aaaa", "bbbb", "c" * 16], {"aaaa": "m", "bbbb": "m"})
    assert sweep_main(["status", "--out", str(store.root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1:3] == ["  finished 1/3, running 0, failed 1, pending 1",
                          f"  1 record file(s) in {store.records_dir} cannot be read (damaged?): "
                          f"{'c' * 16}.json; their jobs count as pending, and the next run measures "
                          "them again"]
    assert sweep_main(["status", "--out", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["unreadable"] == ["c" * 16 + ".json"]


def test_status_while_a_rerun_retries_failed_jobs_counts_them_pending(tmp_path, capsys):
    # a rerun runs failed jobs again (pending until a task takes them, as its progress lines
    # say); `sweep status` counted and listed them as failed from their old records meanwhile
    store = ResultStore(tmp_path / "sweep")
    ids = [c * 16 for c in "abcd"]
    for jid, status in zip(ids, ("ok", "failed", "failed", "failed")):
        store.write_record({"id": jid, "status": status, "error": f"RuntimeError: {jid[0]}",
                            "job": {"model": {"label": "m"}, "family": "rotation", "seed": 0}})
    store.write_spec({"models": [{"label": "m"}]}, ids)
    # the driver (this process): "c" is running again, "d" failed again in this run, "b" waits
    live = {"sweep": "s", "state": "running", "pid": os.getpid(), "host": socket.gethostname(),
            "running_ids": [ids[2]], "failed_ids": [ids[3]]}
    store.write_status(live)
    want = {"finished": 1, "running": 1, "failed": 1, "pending": 1}
    assert store.counts() == want
    assert sweep_main(["status", "--out", str(store.root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"out": str(store.root), "total": 4, **want,
                                                   "state": "running", "unreadable": []}
    assert sweep_main(["status", "--out", str(store.root)]) == 0
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  failed ")]
    assert failed == [f"  failed {ids[3]} m / None / rotation / seed 0: RuntimeError: d"]
    # once it is done, the records say it all
    store.write_status({**live, "state": "done", "running_ids": []})
    assert store.counts() == {"finished": 1, "running": 0, "failed": 3, "pending": 0}


def test_status_of_a_folder_that_is_no_sweep_is_an_error(tmp_path, capsys):
    # a user's folder printed "unknown / finished 0/0" and exited 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    (mine / "records").mkdir()  # a folder of the user's, not job records
    for folder, said in ((mine, "holds no sweep's files"), (tmp_path / "none", "does not exist")):
        assert sweep_main(["status", "--out", str(folder)]) == 2
        assert f"Expected a sweep results folder, but {str(folder)!r} {said}" in capsys.readouterr().err
    # a spec.json or status.json of another tool's (a common name) made it a sweep's: `sweep
    # status` failed with "KeyError: 'jobs'", `sweep report` with "KeyError: 'spec'"
    (mine / "spec.json").write_text('{"model": "resnet", "lr": 0.1}')
    (mine / "status.json").write_text('["idle"]')
    assert not ResultStore(mine).is_store()
    for command in ("status", "report"):
        assert sweep_main([command, "--out", str(mine)]) == 2
        assert (f"Expected a sweep results folder, but {str(mine)!r} holds no sweep's files"
                in capsys.readouterr().err)
    assert ResultStore(mine).read_spec() is None and ResultStore(mine).read_status() is None
    store = ResultStore(tmp_path / "sweep")  # a sweep's own files still mark it
    store.write_spec({"models": []}, ["a" * 16])
    assert store.is_store() and store.read_spec()["jobs"] == ["a" * 16]


def test_report_of_measured_accuracy_without_labels_says_so(folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = load_spec(_spec(folder))
    _finished_records(spec, out)
    assert run_sweep(spec, out=out, progress=False).skipped == 6  # writes the tables, no Ray
    assert sweep_main(["report", "--out", str(out), "--accuracy", "measured"]) == 0
    err = capsys.readouterr().err
    assert "no job has a measured accuracy" in err and "--accuracy known" in err, err
    assert "needs at least 3 models with a score and an accuracy (min_models, --min-models), and 0 " \
           "have them" in err
    assert not (out / "figures" / "fig13_accuracy_correlation.png").exists()
    assert sweep_main(["report", "--out", str(out), "--accuracy", "known", "--min-models", "4"]) == 0
    assert capsys.readouterr().err.strip().endswith(
        ": Spearman's correlation needs at least 4 models with a score and an accuracy "
        "(min_models, --min-models), and 3 have them.")
    same = load_spec(_spec(folder, models=[dict(m, accuracy=0.5) for m in MODELS]))
    _finished_records(same, tmp_path / "same")  # enough models, but one accuracy for all
    run_sweep(same, out=tmp_path / "same", progress=False)
    assert sweep_main(["report", "--out", str(tmp_path / "same"), "--accuracy", "known"]) == 0
    assert capsys.readouterr().err.strip().endswith(
        ": the scores or the accuracies of its 3 models are all equal.")
    assert not (out / "figures" / "fig13_accuracy_correlation.png").exists()
    with pytest.warns(UserWarning, match="no job has a measured accuracy"):
        assert analysis.part_scores(out, accuracy="measured")["accuracy"].isna().all()
    # through sweep_figures too, the warnings name the caller's line (stacklevel=2 named
    # analysis.py's)
    with pytest.warns(UserWarning, match="no job has a measured accuracy") as ws:
        analysis.sweep_figures(out, tmp_path / "measured", accuracy="measured")
    assert {w.filename for w in ws if issubclass(w.category, ef.EquifastWarning)} == {__file__}
    # the known accuracies are there, and give figure 13 without a warning
    assert sweep_main(["report", "--out", str(out), "--accuracy", "known"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert (out / "figures" / "fig13_accuracy_correlation.png").is_file()
    scores = pd.read_csv(out / "figures" / "part_scores.csv")
    assert dict(zip(scores["model"], scores["accuracy"])) == {
        m.label: pytest.approx(m.accuracy) for m in spec.models}
    # no figure 13 this time: the one drawn before, which the tables no longer match, is gone,
    # and so is a figure of a family the sweep no longer has
    (out / "figures" / "parts_flip.png").write_bytes(b"")
    assert sweep_main(["report", "--out", str(out), "--accuracy", "measured"]) == 0
    assert not (out / "figures" / "fig13_accuracy_correlation.png").exists()
    assert not (out / "figures" / "parts_flip.png").exists()
    assert (out / "figures" / "fig12_rotation.png").is_file()
    # a user's folder as --figures: refused, their file untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my data")
    assert sweep_main(["report", "--out", str(out), "--figures", str(mine)]) == 2
    assert "holds other files: ['notes.txt']" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_a_bad_min_models_from_the_command_line_names_the_flag(folder, tmp_path, capsys):
    # it named sweep_figures' argument `min_models`, which the shell's user never wrote
    out = tmp_path / "sweep"
    spec = load_spec(_spec(folder))
    _finished_records(spec, out)
    run_sweep(spec, out=out, progress=False)
    assert sweep_main(["report", "--out", str(out), "--accuracy", "known", "--min-models", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: Expected --min-models to be an integer >= 2" in err and "but got 1." in err
    assert "`min_models`" not in err
    assert not (out / "figures").exists()  # refused before anything is written
    # a metric the sweep did not measure named `metric`
    assert sweep_main(["report", "--out", str(out), "--metric", "cosinus"]) == 2
    err = capsys.readouterr().err
    assert "error: Expected --metric to be one of ['correlation'], but got 'cosinus'." in err, err
    assert not (out / "figures").exists()


def test_report_figures_inside_a_datasets_folder_are_refused(folder, tmp_path, capsys):
    # `sweep report --figures DATA/figs` wrote its PNGs into the dataset's folder: the next run
    # read figs/ as a class of images and measured every job of the dataset again on them
    import shutil

    data = tmp_path / "data"
    shutil.copytree(folder, data)
    classes = ef.data.ImageFiles(data).classes
    out = tmp_path / "sweep"
    _finished_records(load_spec(_spec(data)), out)
    assert sweep_main(["report", "--out", str(out), "--figures", str(data / "figs")]) == 2
    err = capsys.readouterr().err
    assert (f"Expected --figures outside the images of dataset 'tiny', but {str(data / 'figs')!r} "
            f"lies in its folder {str(data)!r}") in err
    assert not (data / "figs").exists() and ef.data.ImageFiles(data).classes == classes
    with pytest.raises(ValueError, match="Expected --figures outside the images"):
        analysis.sweep_figures(out, data)
    files = analysis.sweep_figures(out, tmp_path / "figures")  # elsewhere: drawn
    assert all(p.parent == tmp_path / "figures" for p in files["tables"] + files["figures"])


def test_report_never_removes_a_users_figure_named_like_one(folder, tmp_path):
    out = tmp_path / "sweep"
    spec = load_spec(_spec(folder))
    _finished_records(spec, out)
    run_sweep(spec, out=out, progress=False)  # the tables; every job is finished: no Ray
    figures = tmp_path / "paper"
    figures.mkdir()
    for name in ("fig8_resnet44_thesis.png", "parts_notes.png", "fig11_translation_thesis.png"):
        (figures / name).write_bytes(b"my figure")
    with pytest.raises(FileExistsError, match=r"holds other files: \['fig11_translation_thesis.png', "
                                              r"'fig8_resnet44_thesis.png', 'parts_notes.png'\]"):
        analysis.sweep_figures(out, figures)
    assert sorted(p.name for p in figures.iterdir()) == [
        "fig11_translation_thesis.png", "fig8_resnet44_thesis.png", "parts_notes.png"]
    assert all(p.read_bytes() == b"my figure" for p in figures.iterdir())
    # nor a name no report writes, though its pattern looks like one (translation's parts are
    # fig11_translation.png, never parts_translation.png)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "parts_translation.png").write_bytes(b"my figure")
    with pytest.raises(FileExistsError, match=r"holds other files: \['parts_translation.png'\]"):
        analysis.sweep_figures(out, theirs)
    assert (theirs / "parts_translation.png").read_bytes() == b"my figure"
    # nor files named as the report's, without the report's part_scores.csv beside them: they
    # were replaced
    for names in (["fig11_translation.png"], ["part_scores.csv", "fig11_translation.png"]):
        users = tmp_path / f"users{len(names)}"
        users.mkdir()
        for name in names:
            (users / name).write_bytes(b"my own")
        with pytest.raises(FileExistsError, match=rf"holds other files: {sorted(names)!r}".replace("[", r"\[")):
            analysis.sweep_figures(out, users)
        assert all((users / name).read_bytes() == b"my own" for name in names)
    # the report's own folder (a .DS_Store beside it) is replaced as before
    analysis.sweep_figures(out, tmp_path / "report")
    (tmp_path / "report" / ".DS_Store").write_bytes(b"Bud1")
    assert analysis.sweep_figures(out, tmp_path / "report")["tables"]


def _ranked_report(spec, out, ranks, rising, capsys):
    """The lines ``sweep report`` prints from the correlation tables on, for finished records
    of ``spec``'s jobs whose parts early and final score by the model's place in ``ranks``:
    rising for the transform set ``rising``, falling for the others."""
    store = ResultStore(out)
    for job in spec.jobs():
        rank = ranks.index(job.model.label)
        value = 0.2 * (rank if job.family == rising else 2 - rank) + 0.1
        parts = [{"part": p, "family": "translation", "metric": "correlation", "channel": value,
                  "layer": value} for p in ("early", "final")]
        store.write_record({"id": job.id, "status": "ok", "job": job.entry(), "points": [],
                            "parts": parts})
    run_sweep(spec, out=out, progress=False)
    assert sweep_main(["report", "--out", str(out), "--accuracy", "known"]) == 0
    printed = capsys.readouterr().out.splitlines()
    return printed[printed.index(next(line for line in printed if "with top-1 accuracy" in line)):]


def test_report_prints_each_transform_set_apart(folder, tmp_path, capsys):
    # two shift ranges of one family rank the models in opposite orders: their correlations
    # are printed a row each, never averaged into one
    out = tmp_path / "sweep"
    spec = load_spec(_spec(folder, transforms={"small": "translation:1-2", "big": "translation:1-4"}))
    accuracy = {m.label: m.accuracy for m in spec.models}
    ranks = sorted(accuracy, key=accuracy.get)  # 0, 1, 2 by accuracy
    printed = _ranked_report(spec, out, ranks, "small", capsys)
    rows = {("big" if "big" in line else "small"): float(line.split()[-2])  # early's column
            for line in printed[:7] if "channel" in line}
    assert rows == {"small": pytest.approx(1.0), "big": pytest.approx(-1.0)}


def test_report_prints_the_names_its_tables_hold(folder, tmp_path, capsys):
    # the printed tables were the CSV files read back by pandas' rules: a dataset named 'NA' and
    # a family named 'None' printed as NaN, and a family '1' beside one of them as 1.0
    out = tmp_path / "sweep"
    spec = load_spec(_spec(folder, datasets=[{"name": "NA", "path": str(folder), "image_size": 32}],
                           transforms={"None": "translation:1-2", "1": "translation:1-4"}))
    # the two sets rank the models in opposite orders
    printed = _ranked_report(spec, out, [m.label for m in spec.models], "1", capsys)
    table = analysis.accuracy_correlation(out, accuracy="known")
    want = {(row.transforms, row.score): row.spearman for row in table.itertuples()
            if row.part == "early"}
    got, transforms = {}, None
    for line in printed[3:7]:  # the rows below the two header lines
        words = line.split()
        if words[0] == "NA":
            assert words[1] == "correlation", line
        if "translation" in words:  # a transform set's first row names it
            transforms = words[words.index("translation") - 1]
        got[(transforms, words[-3])] = float(words[-2])  # score, early's column
    assert set(got) == {(t, s) for t in ("None", "1") for s in ("channel", "layer")}, printed
    assert got == pytest.approx(want) and got[("1", "channel")] == -got[("None", "channel")]


def test_sweep_help_describes_every_command_and_option_once():
    import argparse

    from equifast.distributed.cli import add_sweep_parser

    sweep = add_sweep_parser(argparse.ArgumentParser(prog="equifast").add_subparsers())
    commands = next(a for a in sweep._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"run", "status", "report"}
    for name, parser in commands.items():
        assert parser.description, name
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)
                if action.default not in (None, False):  # a default shown is the real one
                    assert f"(default: {action.default})" in text, (name, action.dest)
        assert not re.search(r"\(default: [^)]*\) \(default:", text), (name, text)


# ---- analysis --------------------------------------------------------------------------------

def test_spearman_against_hand_computed_values():
    rows = []
    models, acc = ["a", "b", "c", "d"], [0.5, 0.6, 0.7, 0.8]
    channel = {"early": [0.1, 0.4, 0.3, 0.9],   # ranks 1 3 2 4: rho = 1 - 6*2/(4*15) = 0.8
               "final": [0.9, 0.7, 0.5, 0.1]}   # reversed: -1
    layer = {"early": [1.0, 2.0, 2.0, 3.0],     # a tie: ranks 1 2.5 2.5 4 -> 4.5/sqrt(4.5*5)
             "final": [0.3, 0.3, 0.3, 0.3]}     # constant: undefined
    for part in ("early", "final"):
        for i, m in enumerate(models):
            rows.append({"model": m, "dataset": "d", "transforms": "rotation", "family": "rotation",
                         "part": part, "metric": "correlation", "seed": 0,
                         "channel": channel[part][i], "layer": layer[part][i], "accuracy": acc[i]})
    corr = analysis.accuracy_correlation(pd.DataFrame(rows))
    got = {(r.part, r.score): r.spearman for r in corr.itertuples()}
    assert got[("early", "channel")] == pytest.approx(0.8)
    assert got[("final", "channel")] == pytest.approx(-1.0)
    assert got[("early", "layer")] == pytest.approx(4.5 / np.sqrt(22.5))
    assert np.isnan(got[("final", "layer")])
    assert set(corr["n_models"]) == {4}
    few = analysis.accuracy_correlation(pd.DataFrame(rows[:2] + rows[4:6]))
    assert few["spearman"].isna().all()  # fewer than 3 models


def test_correlation_with_the_final_part_against_hand_computed_values():
    rows = []
    scores = {"early": [0.1, 0.4, 0.3, 0.9],   # final ranks 1 2 3 4, early 1 3 2 4: 0.8
              "late": [0.8, 0.6, 0.4, 0.2],    # reversed: -1
              "final": [0.5, 0.6, 0.7, 0.8]}
    for part, values in scores.items():
        for m, v in zip("abcd", values):
            rows.append({"model": m, "dataset": "d", "transforms": "translation",
                         "family": "translation", "part": part, "metric": "correlation",
                         "seed": 0, "channel": v, "layer": v if part != "late" else 0.3})
    got = analysis.final_correlation(pd.DataFrame(rows))
    rho = {(r.part, r.score): r.spearman for r in got.itertuples()}
    assert rho[("early", "channel")] == pytest.approx(0.8)
    assert rho[("late", "channel")] == pytest.approx(-1.0)
    assert np.isnan(rho[("late", "layer")]) and "final" not in set(got["part"])  # always 1
    assert set(got["n_models"]) == {4}
    # a model without a final part has nothing to correlate with
    assert set(analysis.final_correlation(pd.DataFrame(rows[:-1]))["n_models"]) == {3}


def test_figure13_marks_an_undefined_part_and_does_not_bridge_it(tmp_path, monkeypatch):
    from equifast import figures
    drawn = []
    real = figures.plot_accuracy_correlation
    monkeypatch.setattr(figures, "plot_accuracy_correlation",
                        lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    rows = [{"model": m, "dataset": "d", "family": "translation", "part": part, "seed": 0,
             "channel": 0.5 if part == "middle" else 0.2 + 0.1 * i, "layer": 0.3 + 0.1 * i,
             "accuracy": 0.1 * i}  # the middle part's channel scores are all equal: no rho
            for i, m in enumerate("abcd") for part in ("early", "middle", "final")]
    analysis.sweep_figures(pd.DataFrame(rows), tmp_path / "figures")
    ax = drawn[0].axes[0]
    channel = next(line for line in ax.get_lines() if line.get_label() == "channel")
    # the middle part was dropped before drawing, and the line went straight from early to final;
    # late and pool, which no model has, are marked too, as in figures 11 and 12
    assert list(channel.get_xdata()) == [0, 1, 2, 3, 4]
    assert np.isnan(channel.get_ydata()[1:4]).all()
    assert [list(line.get_xdata()) for line in ax.get_lines()
            if line.get_gid() == figures.UNDEFINED] == [[1, 2, 3], [2, 3]]  # channel, layer
    assert drawn[0]._suptitle.get_text().endswith("(d, 4 models)")


def test_shift_scores_average_each_shift_over_points_then_seeds():
    rows = []
    for model, base in (("b", 0.2), ("a", 0.4)):
        for seed in (0, 1):
            for point, part in (("p0", "early"), ("p1", "early"), ("p2", "late")):
                for s in (1, 2, 3):
                    c = base + 0.1 * s + 0.01 * seed + (0.05 if point == "p1" else 0)
                    rows.append({"model": model, "dataset": "d", "transforms": "translation",
                                 "seed": seed, "point": point, "part": part,
                                 "transform": f"translation({s},{s})", "family": "translation",
                                 "metric": "correlation", "channel": c, "layer": c + 0.1,
                                 "undefined_fraction": 0.0})
                rows.append({**rows[-1], "transform": "rotation(90)", "family": "rotation"})
    got = analysis.shift_scores(pd.DataFrame(rows))
    assert set(got["family"]) == {"translation"} and list(got["model"].unique()) == ["a", "b"]
    row = got[(got.model == "b") & (got.part == "early") & (got.dy == 2)].iloc[0]
    per_seed = [0.2 + 0.2 + 0.01 * seed + 0.025 for seed in (0, 1)]  # early: p0 and p1
    assert row.channel == pytest.approx(np.mean(per_seed))
    assert row.channel_std == pytest.approx(np.std(per_seed, ddof=1))
    assert row.layer == pytest.approx(np.mean(per_seed) + 0.1) and row.seeds == 2
    assert list(got[(got.model == "a") & (got.part == "late")].dy) == [1, 2, 3]
    assert analysis.shift_scores(pd.DataFrame([r for r in rows if r["family"] == "rotation"])).empty


# ---- sweeps on Ray ---------------------------------------------------------------------------

def test_sweep_of_three_models_and_two_families(ray_session, folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    result = run_sweep(_spec(folder), out=out)
    assert result.complete and result.total == 6 and result.ran == 6 and not result.failures
    lines = capsys.readouterr().out
    assert "finished 6/6, running 0, failed 0, pending 0" in lines

    store = ResultStore(out)
    tables = store.tables()
    jobs = pd.read_parquet(out / "jobs.parquet")
    assert len(jobs) == 6 and jobs["job_id"].is_unique and (jobs["status"] == "ok").all()
    assert set(jobs["model"]) == {"resnet18", "mobilenet_v3_small", "resnet10t"}
    # random weights read as the spec says them, in both tables (an empty cell reads as unknown)
    assert set(jobs["weights"]) == set(pd.read_csv(out / "jobs.csv")["weights"]) == {"none"}
    parts = pd.read_parquet(out / "parts.parquet")
    assert set(parts["family"]) == {"translation", "rotation"}
    assert set(parts["part"]) == {"early", "middle", "late", "pool", "final"}
    assert len(pd.read_csv(out / "points.csv")) == len(tables["points"])
    assert not tables["points"].duplicated(["job_id", "point", "transform", "metric"]).any()
    rec = store.get(jobs["job_id"].iloc[0])
    assert rec["n_images"] == 8 and rec["accuracy_source"] == "measured"  # class subfolders
    assert rec["hosts"] and rec["timings"]["measure_s"] > 0 and rec["job"]["model"]["label"]
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "done" and status["finished"] == 6 and status["pending"] == 0

    again = run_sweep(_spec(folder), out=out, progress=False)  # a rerun skips finished jobs
    assert again.complete and again.ran == 0 and again.skipped == 6
    assert sweep_main(["status", "--out", str(out)]) == 0
    assert "finished 6/6, running 0, failed 0, pending 0" in capsys.readouterr().out

    assert sweep_main(["report", "--out", str(out), "--accuracy", "known"]) == 0
    printed = capsys.readouterr().out
    assert "with top-1 accuracy, across models" in printed
    assert "with the final part's score (invariance), across models" in printed
    # a row per transform set as the tables have them: none for combinations that do not exist
    # (the translation set's rotation family, ...)
    for table in printed.split("Spearman rank correlation")[1:]:
        assert sum(" channel " in line for line in table.splitlines()) == 2, table
    for name in ("fig11_translation.png", "fig12_rotation.png", "fig13_accuracy_correlation.png",
                 "fig8_translation.png", "part_scores.csv", "shift_scores.csv",
                 "accuracy_correlation.csv", "final_correlation.csv"):
        assert (out / "figures" / name).is_file(), name
    assert not (out / "figures" / "fig8_rotation.png").exists()
    scores = analysis.part_scores(out, accuracy="known")
    assert dict(zip(scores["model"], scores["accuracy"]))["resnet10t"] == pytest.approx(0.66)
    # each part's score at shifts 1 and 2, averaged, is its translation score
    shifts = pd.read_csv(out / "figures" / "shift_scores.csv")
    assert set(shifts["dy"]) == {1, 2} and set(shifts["model"]) == set(scores["model"])
    keys = ["model", "part"]
    mean = shifts.groupby(keys)[["channel", "layer"]].mean()
    both = scores[scores.family == "translation"].astype({"part": str}).merge(
        mean.reset_index(), on=keys, suffixes=("", "_s"))
    assert len(both) == 15 and np.allclose(both.channel, both.channel_s, equal_nan=True)
    assert np.allclose(both.layer, both.layer_s, equal_nan=True)


def test_a_relative_folder_that_means_other_images_now_is_measured_again(ray_session, tmp_path, capsys):
    import shutil
    import warnings

    import yaml
    from PIL import Image

    spec = {"models": [MODELS[2]], "datasets": [{"path": "data", "image_size": 32}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 2, "batch_size": 2}
    for seed, project in enumerate(("a", "b")):  # two projects, each with its own data/
        (tmp_path / project / "data").mkdir(parents=True)
        (tmp_path / project / "spec.yaml").write_text(yaml.safe_dump(spec))
        rng = np.random.default_rng(seed)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / project / "data" / f"{project}{i}.png")
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # as `ray job submit --working-dir` does
    (a,), (b,), (copy,) = (load_spec(tmp_path / p / "spec.yaml").jobs() for p in ("a", "b", "copy"))
    assert a.id == b.id == copy.id  # the path as the spec says it: a copied folder skips
    out = tmp_path / "shared"
    ResultStore(out).write_record({"id": a.id, "status": "ok", "job": a.entry(), "points": [],
                                   "parts": []})
    assert ResultStore(out).get(a.id)["job"]["dataset"]["resolved_path"] == str(tmp_path / "a" / "data")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = run_sweep(tmp_path / "copy" / "spec.yaml", out=out, progress=False)
    assert (again.ran, again.skipped) == (0, 1)
    # the other project's data/: its own images, not project a's results
    said = (r"dataset 'data': 1 finished job\(s\) measured '.*/a/data', but the spec's relative path "
            r"now means '.*/b/data', which holds other images: they are measured again")
    with pytest.warns(UserWarning, match=said):
        assert sweep_main(["run", str(tmp_path / "b" / "spec.yaml"), "--out", str(out), "--dry-run"]) == 0
    assert f"{a.id}  moved " in capsys.readouterr().out
    with pytest.warns(UserWarning, match=said):
        result = run_sweep(tmp_path / "b" / "spec.yaml", out=out, progress=False)
    assert (result.ran, result.skipped) == (1, 0) and result.complete
    rec = ResultStore(out).get(b.id)
    assert rec["job"]["dataset"]["resolved_path"] == str(tmp_path / "b" / "data") and rec["n_images"] == 2


def test_a_relative_folder_changed_in_a_subfolder_is_seen_by_the_next_run(tmp_path, capsys):
    # a second run in the same process (Python, a notebook) compares the folder as it is now,
    # not a fingerprint cached while the folder's own modification time stayed the same
    import shutil

    import yaml
    from PIL import Image

    spec = {"models": [MODELS[2]], "datasets": [{"path": "data", "image_size": 32}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 2, "batch_size": 2}
    rng = np.random.default_rng(0)
    for i in range(2):
        (tmp_path / "a" / "data" / f"class{i}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
            tmp_path / "a" / "data" / f"class{i}" / f"{i}.png")
    (tmp_path / "a" / "spec.yaml").write_text(yaml.safe_dump(spec))
    shutil.copytree(tmp_path / "a", tmp_path / "copy")  # as `ray job submit --working-dir` does
    (a,) = load_spec(tmp_path / "a" / "spec.yaml").jobs()
    out = tmp_path / "shared"
    ResultStore(out).write_record({"id": a.id, "status": "ok", "job": a.entry(), "points": [],
                                   "parts": []})
    dry = ["run", str(tmp_path / "copy" / "spec.yaml"), "--out", str(out), "--dry-run"]
    assert sweep_main(dry) == 0  # the same images: finished
    assert f"{a.id}  ok " in capsys.readouterr().out
    data = tmp_path / "copy" / "data"
    stamp = data.stat().st_mtime_ns
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / "class0" / "2.png")
    assert data.stat().st_mtime_ns == stamp  # a file added in a subfolder: data/ itself unchanged
    with pytest.warns(UserWarning, match="which holds other images: they are measured again"):
        assert sweep_main(dry) == 0
    assert f"{a.id}  moved " in capsys.readouterr().out


def test_a_folder_is_listed_once_a_run_not_once_a_job(ray_session, tmp_path, monkeypatch):
    # every record listed and stat'ed its job's whole folder again for its fingerprint: a
    # sweep of hundreds of jobs on ImageNet's 50,000 files spent a second a job in the driver;
    # and a flat folder was listed three times a run (the spec's check of repeated jobs, the
    # run's jobs, the fingerprint), a folder of kept shards once more
    import yaml
    from PIL import Image

    from equifast.data import ImageFiles
    from equifast.distributed.spec import folder_files_sha256

    (tmp_path / "data").mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "data" / "0.png")
    spec = {"models": [MODELS[2]], "datasets": [{"path": "data", "image_size": 32}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 1, "batch_size": 1,
            "seeds": [0, 1, 2, 3], "max_retries": 0}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    listed = []
    real = ImageFiles.__init__

    def counted(self, root, *args, **kwargs):  # the driver's listings (workers list their own)
        listed.append(str(root))
        real(self, root, *args, **kwargs)

    monkeypatch.setattr(ImageFiles, "__init__", counted)

    def fail_odd_seeds(job, shard, attempt):  # failure records too
        if job.seed % 2:
            raise RuntimeError("an odd seed")

    result = run_sweep(tmp_path / "spec.yaml", out=tmp_path / "out", progress=False,
                       before_job=fail_odd_seeds)
    assert (result.finished, result.failed) == (2, 2)
    assert listed == [str(tmp_path / "data")]  # 4 records, 1 listing
    digests = {r["job"]["dataset"]["files_sha256"] for r in ResultStore(tmp_path / "out").records()}
    assert digests == {folder_files_sha256(str(tmp_path / "data"))}


def _crash_first_attempt(marker_dir, family="rotation"):
    """A hook that kills the worker process the first time a job of ``family`` starts."""
    def hook(job, shard, attempt):
        marker = Path(marker_dir) / f"{job.id}.{shard}"
        if job.family == family and not marker.exists():
            marker.touch()
            os._exit(1)
    return hook


def test_worker_killed_mid_sweep_is_retried_then_recorded(ray_session, folder, tmp_path):
    one = _spec(folder, models=MODELS[2:])
    # Ray retries the killed worker's task: the sweep completes, and the record counts both attempts.
    out = tmp_path / "retried"
    result = run_sweep(one, out=out, before_job=_crash_first_attempt(tmp_path), progress=False)
    assert result.complete
    jobs = ResultStore(out).tables()["jobs"].set_index("transforms")
    assert jobs.loc["rotation", "attempts"] == 2 and jobs.loc["translation", "attempts"] == 1

    # No retries left: the job gets a failure record with its error; a rerun completes it.
    out = tmp_path / "failed"
    marker = tmp_path / "markers"
    marker.mkdir()
    result = run_sweep({**one, "max_retries": 0}, out=out, before_job=_crash_first_attempt(marker),
                       progress=False)
    assert not result.complete and result.failed == 1 and result.finished == 1
    store = ResultStore(out)
    failed = list(store.records(status="failed"))
    assert len(failed) == 1 and failed[0]["job"]["family"] == "rotation"
    assert "Worker" in failed[0]["error"] or "died" in failed[0]["error"], failed[0]["error"]
    assert store.counts() == {"finished": 1, "running": 0, "failed": 1, "pending": 0}
    again = run_sweep({**one, "max_retries": 0}, out=out, progress=False)
    assert again.complete and again.ran == 1 and again.skipped == 1
    jobs = store.tables()["jobs"]
    assert len(jobs) == 2 and jobs["job_id"].is_unique and (jobs["status"] == "ok").all()
    assert jobs.set_index("transforms").loc["rotation", "total_attempts"] == 2
    assert len(list((out / "records").iterdir())) == 2


def _failing_shard(failing=0, model="resnet10t"):
    """A hook whose shard ``failing`` of ``model``'s jobs raises (nested: pickled by value for
    the workers)."""
    def hook(job, shard, attempt):
        if shard == failing and job.model.label == model:
            raise ValueError(f"bad input in shard {shard} of {job.title}")
    return hook


def test_a_shard_failing_beside_another_that_ends_fails_its_job_and_the_rerun_measures_it(
        ray_session, tmp_path):
    # Both shards' results come back in one ray.wait (poll_s: longer than the job): the
    # failed shard 0 dropped shard 1 from the pending tasks, and shard 1's turn in the same
    # batch then raised KeyError, which stopped the whole sweep.
    spec = {"models": [MODELS[2], MODELS[0]], "transforms": {"rotation": "rotation:90"},
            "datasets": [{"name": "noise", "kind": "random", "image_size": 32}],
            "n_images": 4, "batch_size": 2, "shards": 2, "resources": {"num_cpus": 1}, "max_retries": 0}
    out = tmp_path / "out"
    result = run_sweep(spec, out=out, progress=False, before_job=_failing_shard(0), poll_s=60)
    job, other = load_spec(spec).jobs()
    assert job.model.label == "resnet10t" and other.model.label == "resnet18"
    assert (result.finished, result.failed, result.pending) == (1, 1, 0)  # the other job went on
    store = ResultStore(out)
    assert store.status_of(other.id) == "ok"
    rec = store.get(job.id)
    assert rec["status"] == "failed" and rec["attempts"] == 1
    assert rec["error"] == f"ValueError: bad input in shard 0 of {job.title}"
    assert result.failures == {job.id: rec["error"]}
    # shard 1 finished: kept (tests/test_sweep_resume.py), so the rerun measures shard 0 only
    assert [(s, k) for s, k, _ in store.shard_files()[job.id]] == [(1, 2)]
    again = run_sweep(spec, out=out, progress=False)
    assert again.complete and again.ran == 1 and again.skipped == 1
    rec = store.get(job.id)
    assert rec["n_images"] == 4 and sorted(i["shard"] for i in rec["timings"]["shards"]) == [0, 1]
    assert rec["reused_shards"] == [1] and store.shard_files() == {}
    assert rec["total_attempts"] == 2 and len(list((out / "records").iterdir())) == 2


def test_retried_exceptions_are_not_retried_when_they_would_repeat(ray_session, tmp_path):
    # retry_exceptions: true retried a bad image max_retries times (hours of a shard each at
    # ImageNet scale), though it fails the same way each time; an error that may pass is retried
    from PIL import Image

    data = tmp_path / "data"
    for i in range(4):
        (data / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), i * 40, np.uint8)).save(data / f"class{i % 2}" / f"{i}.png")
    (data / "class1" / "3.png").write_bytes(b"no image")  # a real bad input
    spec = {"models": [MODELS[2]], "transforms": {"rotation": "rotation:90"},
            "datasets": [{"name": "bad", "path": str(data), "image_size": 32},
                         {"name": "noise", "kind": "random", "image_size": 32}],
            "n_images": 4, "batch_size": 4, "resources": {"num_cpus": 1}, "max_retries": 2,
            "retry_exceptions": True}
    markers = tmp_path / "markers"
    markers.mkdir()

    def flaky(job, shard, attempt):  # the noise job's first attempt raises, as CUDA OOM may
        marker = Path(markers) / job.id
        if job.dataset.label == "noise" and not marker.exists():
            marker.touch()
            raise RuntimeError("CUDA out of memory (another task on the GPU)")

    out = tmp_path / "out"
    result = run_sweep(spec, out=out, before_job=flaky, progress=False)
    bad, noise = load_spec(spec).jobs()
    assert (result.finished, result.failed) == (1, 1)
    store = ResultStore(out)
    rec = store.get(bad.id)
    assert rec["status"] == "failed" and rec["attempts"] == 1 and rec["total_attempts"] == 1
    assert rec["error"].startswith("ValueError: Expected ") and "3.png' to be a readable image" in rec["error"]
    assert "Traceback" in rec["traceback"] and "ValueError" in rec["traceback"]
    rec = store.get(noise.id)
    assert rec["status"] == "ok" and rec["attempts"] == 2


def test_a_tracker_that_dies_does_not_stop_the_sweep(ray_session, tmp_path, monkeypatch):
    # the actor counting attempts is bookkeeping: its loss (a node lost, killed) stopped the
    # whole sweep at the driver's next ray.get of its counts
    from equifast.distributed import sweep as sweep_mod

    class Dying(sweep_mod._Tracker):
        def snapshot(self):
            ray.actor.exit_actor()

    monkeypatch.setattr(sweep_mod, "_Tracker", Dying)
    spec = {"models": [MODELS[2]], "transforms": {"rotation": "rotation:90"},
            "datasets": [{"name": "noise", "kind": "random", "image_size": 32}],
            "n_images": 4, "batch_size": 2, "shards": 2, "resources": {"num_cpus": 1},
            "max_retries": 0}
    lines = []
    result = run_sweep(spec, out=tmp_path / "out", echo=lines.append)
    assert result.complete, lines
    assert any("the tracker of attempts is gone" in line for line in lines), lines
    (rec,) = ResultStore(tmp_path / "out").records()
    assert rec["status"] == "ok" and rec["n_images"] == 4


def test_an_interrupted_sweeps_status_counts_what_is_done_and_nothing_running(ray_session, tmp_path):
    # Ctrl-C: status.json kept the counts last written (on a change of line), less the running
    # jobs, which were in no count then: finished 0 of 2 and pending 1 after a job had finished
    spec = {"models": [MODELS[2]], "transforms": {"translation": "translation:1", "rotation": "rotation:90"},
            "datasets": [{"name": "noise", "kind": "random", "image_size": 32}],
            "n_images": 2, "batch_size": 2, "resources": {"num_cpus": 1}}

    def ctrl_c_after_the_first_job(line):
        if line.startswith("  ok "):
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, out=out, echo=ctrl_c_after_the_first_job)
    store = ResultStore(out)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "interrupted" and status["running"] == 0
    assert {k: status[k] for k in ("finished", "failed", "pending")} == {
        "finished": 1, "failed": 0, "pending": 1} == {
        k: store.counts()[k] for k in ("finished", "failed", "pending")}
    assert not (out / "sweep.lock").exists()
    again = run_sweep(spec, out=out, progress=False)
    assert again.complete and again.ran == 1 and again.skipped == 1


def _single_process(folder, seed=0, n_images=6, threads=None):
    """``equifast.measure`` in this process; ``threads``: as many as a Ray worker with that
    many CPUs uses (float32 convolutions round differently with another thread count)."""
    from equifast.models import default_preprocess, load_model

    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        torch.manual_seed(seed)
        model, _ = load_model("resnet10t", weights=None, num_classes=2)
        return ef.measure(model, str(folder), transforms=ef.parse_transforms("translation:1-2"),
                          batch_size=4, n_images=n_images, seed=seed,
                          preprocess=default_preprocess(32))
    finally:
        torch.set_num_threads(before)


def _assert_same(a: pd.DataFrame, b: pd.DataFrame):
    key = ["point", "transform", "metric"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert a[key].equals(b[key])
    for col in ("channel", "layer"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=0, atol=1e-12)
    assert (a["n_images"].to_numpy() == b["n_images"].to_numpy()).all()


def test_shards_in_process_merge_exactly(folder):
    spec = load_spec(_spec(folder, models=MODELS[2:], transforms={"translation": "translation:1-2"},
                           n_images=6, batch_size=4, shards=2))
    job = spec.jobs()[0]
    (s0, i0), (s1, i1) = measure_job(job, 0), measure_job(job, 1)
    assert (i0["n_images"], i1["n_images"]) == (3, 3)
    merged = s0.merge(s1).report()
    single = _single_process(folder)
    _assert_same(merged.points, single.points)
    assert merged.meta["accuracy"] == single.meta["accuracy"]


def test_a_task_with_more_cpus_decodes_in_loader_processes_with_the_same_result(folder):
    spec = _spec(folder, models=MODELS[2:], transforms={"translation": "translation:1-2"},
                 n_images=6, batch_size=4)
    (one,) = load_spec(spec).jobs()
    (three,) = load_spec({**spec, "resources": {"num_cpus": 3}}).jobs()
    (s1, i1), (s3, i3) = measure_job(one), measure_job(three)
    assert (i1["loader_workers"], i3["loader_workers"]) == (0, 2)  # num_cpus - 1
    _assert_same(s3.report().points, s1.report().points)


def test_dataset_split_over_two_workers_equals_single_process(ray_session, folder, tmp_path):
    spec = _spec(folder, models=MODELS[2:], transforms={"translation": "translation:1-2"},
                 n_images=6, batch_size=4, shards=2)
    out = tmp_path / "sharded"
    assert run_sweep(spec, out=out, progress=False).complete
    (rec,) = ResultStore(out).records()
    assert len(rec["timings"]["shards"]) == 2 and rec["n_images"] == 6
    single = _single_process(folder, threads=1)  # resources: {num_cpus: 1}
    stored = pd.DataFrame(rec["points"])
    _assert_same(stored, single.points)
    assert rec["accuracy_measured"] == single.meta["accuracy"]


@pytest.mark.slow
def test_driver_killed_mid_sweep_loses_and_duplicates_nothing(folder, tmp_path):
    """SIGKILL the driver after its first record; the rerun finishes the rest exactly once."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(folder)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "equifast.distributed.cli", "run", str(spec_file), "--out", str(out),
           "--num-cpus", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "records").glob("*.json")):
            time.sleep(0.2)
        assert list((out / "records").glob("*.json")), "no job finished in time"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
        proc.wait()
    store = ResultStore(out)
    before = store.finished()
    assert 1 <= len(before) < 6
    assert store.counts()["running"] == 0  # the writer is gone
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = store.tables()["jobs"]
    assert len(jobs) == 6 and jobs["job_id"].is_unique and (jobs["status"] == "ok").all()
    assert before <= store.finished()
    assert f"{len(before)} already finished, {6 - len(before)} to run" in result.stderr


def test_the_readme_spec_validates(tmp_path):
    # distributed/README.md's annotated spec, with its paths pointed at files made here
    import yaml
    text = (EXAMPLES.parent / "README.md").read_text()
    spec = yaml.safe_load(re.search(r"## The spec.*?```yaml\n(.*?)```", text, re.S).group(1))
    from PIL import Image

    (tmp_path / "val" / "n01440764").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "n01440764" / "a.JPEG")
    import torchvision  # the checkpoint the spec describes (a Linear's no longer passes: it does not fit)

    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), tmp_path / "r18.pt")
    by_name = {d["name"]: d for d in spec["datasets"]}
    by_name["imagenet-val"]["path"] = str(tmp_path / "val")
    by_name["cifar10"]["root"] = str(tmp_path)
    next(m for m in spec["models"] if m["name"] == "my_net")["weights"] = str(tmp_path / "r18.pt")
    validate_spec(spec)  # raises SpecError listing every problem


@pytest.mark.usefixtures("ray_session")
def test_a_sweep_says_each_warning_once(folder, tmp_path):
    models = [{"name": "resnet18", "weights": "none", "num_classes": 3},
              {"name": "resnet10t", "weights": "none", "num_classes": 3}]
    lines = []
    spec = _spec(folder, models=models, transforms={"rotation": "rotation:90"})
    result = run_sweep(spec, out=tmp_path / "out", echo=lines.append)
    assert result.complete
    said = [line for line in lines if line.startswith("  warning (")]
    assert len(said) == 1 and said[0].endswith("): No accuracy: which of the model's 3 classes the 2 "
                                               "class folders (class0, class1) are is unknown (not "
                                               "one folder per class, nor folders numbered 0 to "
                                               "2, nor ImageNet-1k synsets for 1000 classes).")
    assert all(rec["warnings"] for rec in ResultStore(tmp_path / "out").records())


def test_sweep_run_prints_progress_on_stderr_and_checks_num_cpus(folder, tmp_path, monkeypatch,
                                                                  capsys):
    # its progress lines went to stdout (`sweep run ... > log` or `| tee`: results and progress
    # mixed); --num-cpus -2 reached Ray ("Resource quantities must be nonnegative") after it started
    import types

    import yaml

    from equifast.distributed import sweep as sweep_mod

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(folder)))
    for bad in ("0", "-2"):
        assert sweep_main(["run", str(spec_file), "--out", str(tmp_path / "out"), "--num-cpus", bad]) == 2
        assert capsys.readouterr().err == f"equifast sweep: error: Expected --num-cpus >= 1, but got {bad}.\n"
    assert not (tmp_path / "out").exists()

    def fake_run_sweep(spec, out, echo=print, progress=True, **kwargs):
        if progress:
            echo("[test] finished 6/6, running 0, failed 0, pending 0")
        return types.SimpleNamespace(failures=[], complete=True)

    monkeypatch.setattr(sweep_mod, "run_sweep", fake_run_sweep)
    assert sweep_main(["run", str(spec_file), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "finished 6/6" in captured.err
    assert sweep_main(["run", str(spec_file), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


def test_sweep_without_a_command_prints_its_usage_on_stderr(capsys):
    assert sweep_main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "usage: equifast sweep" in captured.err


def test_sweep_main_into_a_closed_pipe_ends_quietly(tmp_path, close_stdout, capsys):
    # `python -m equifast.distributed.cli status ... | head -1` (the Ray job entry point's
    # main) ended in a BrokenPipeError traceback; `equifast sweep` returned 141
    store = ResultStore(tmp_path / "sweep")
    store.write_spec({"name": "s"}, ["aaaa"], {"aaaa": "m"})
    close_stdout()
    assert sweep_main(["status", "--out", str(store.root)]) == 141
    assert capsys.readouterr().err == ""


def test_num_cpus_with_a_cluster_address_is_an_error_not_ignored(tmp_path, capsys, monkeypatch):
    # --num-cpus sizes the local Ray `sweep run` starts; with --address it was silently ignored
    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"models": [MODELS[0]], "datasets": [
        {"kind": "random", "image_size": 32}], "transforms": {"rotation": "rotation:90"}, "n_images": 2}))
    run = ["run", str(spec_file), "--out", str(tmp_path / "out"), "--num-cpus", "2"]
    assert sweep_main(run + ["--address", "auto"]) == 2
    assert "--address joins a running cluster" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert sweep_main(run) == 2
    assert "RAY_ADDRESS joins a running cluster" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert sweep_main(run + ["--dry-run"]) == 0  # nothing joined


def test_a_file_given_as_a_data_folder_is_said_to_be_a_file(tmp_path):
    # the spec's check said a file given as a folder or root "does not exist"
    (tmp_path / "img.png").write_bytes(b"x")
    spec = {"models": [MODELS[0]], "datasets": [
        {"name": "f", "path": str(tmp_path / "img.png")},
        {"name": "t", "torchvision": "CIFAR10", "root": str(tmp_path / "img.png"), "image_size": 32},
        {"name": "gone", "path": str(tmp_path / "gone")}],
        "transforms": {"rotation": "rotation:90"}, "n_images": 2}
    with pytest.raises(SpecError) as err:
        load_spec(spec)
    text = str(err.value)
    assert "datasets[0].path: Expected a folder of images, but " in text
    assert "img.png' is a file, not a folder" in text and "gone' does not exist" in text
    assert "datasets[1].root: Expected the dataset's root folder" in text
    assert text.count("is a file, not a folder") == 2


def test_an_empty_folder_and_a_checkpoint_that_is_no_checkpoint_are_refused_before_anything_runs(tmp_path):
    # both passed the check and failed every job, after Ray had started
    import yaml
    from PIL import Image

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("x")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    torch.save({}, tmp_path / "real.safetensors")
    spec = {"models": [{"name": "resnet18", "weights": str(tmp_path / "junk.pt"), "num_classes": 2},
                       {"name": "resnet18", "label": "st", "weights": "real.safetensors", "num_classes": 2}],
            "datasets": [{"name": "e", "path": str(tmp_path / "empty")},
                         {"name": "p", "path": str(tmp_path / "photos")}],
            "transforms": {"rotation": "rotation:90"}, "n_images": 2}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "spec.yaml")  # a relative checkpoint: beside the spec
    text = str(err.value)
    assert f"datasets[0].path: Expected a folder of images, but {str(tmp_path / 'empty')!r} holds no image files (.jpg" in text
    assert "datasets[1]" not in text
    assert (f"models[0].weights: Expected `weights` {str(tmp_path / 'junk.pt')!r} to be a checkpoint saved "
            "with torch.save (or a .safetensors file), but it is neither") in text
    assert (f"models[1].weights: Expected `weights` {str(tmp_path / 'real.safetensors')!r} to be a "
            "safetensors file, but it could not be read (it does not start with a safetensors header). "
            "It looks like a torch.save file: name it .pt.") in text


def test_a_checkpoint_that_does_not_fit_its_model_is_refused_before_anything_runs(tmp_path):
    # found only by load_model on every worker, after Ray had started and the jobs were submitted
    import timm
    import torchvision
    from safetensors.torch import save_file

    from equifast.models import load_model

    torch.save(timm.create_model("resnet10t", num_classes=2).state_dict(), tmp_path / "r10t.pt")
    save_file(torchvision.models.resnet18(num_classes=10).state_dict(), str(tmp_path / "r18.safetensors"))
    models = [{"name": "mine", "arch": "resnet18", "weights": "r10t.pt", "num_classes": 2},
              {"name": "resnet18", "label": "ten", "weights": "r18.safetensors", "num_classes": 5},
              {"name": "resnet18", "label": "fits", "weights": "r18.safetensors"}]
    with pytest.raises(SpecError) as err:
        validate_spec({"models": models, "datasets": [{"kind": "random", "image_size": 32}],
                       "transforms": {"rotation": "rotation:90"}, "n_images": 2}, base_dir=str(tmp_path))
    want = []
    for i, (arch, path, classes) in enumerate([("resnet18", "r10t.pt", 2), ("resnet18", "r18.safetensors", 5)]):
        with pytest.raises(ValueError) as loaded:  # what each worker said, after the sweep started
            load_model(arch, weights=str(tmp_path / path), num_classes=classes)
        want.append(f"models[{i}].weights ({models[i]['name']}): {loaded.value}")
    assert err.value.problems == want  # one line each; the fitting checkpoint passes
    assert all("\n" not in p and str(tmp_path) in p for p in err.value.problems)
    assert "checkpoint of 'resnet18'" in want[0] and "classifier has 10" in want[1]


def test_a_key_given_twice_in_a_spec_file_is_an_error_not_the_last_one_kept(tmp_path):
    # PyYAML keeps the last of two keys: a second `seeds:` further down replaced the first
    head = ("models: [{name: resnet18, weights: none, num_classes: 2}]\n"
            "datasets: [{kind: random, image_size: 32}]\nn_images: 2\n")
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(head + "seeds: [0]\ntransforms: {rotation: 'rotation:90'}\nseeds: [1, 2]\n")
    with pytest.raises(SpecError, match=r"found the key 'seeds' twice \(first on line 4\)"):
        load_spec(spec_file)
    spec_file.write_text(head.replace("weights: none,", "weights: none, weights: default,"))
    with pytest.raises(SpecError, match="found the key 'weights' twice"):
        load_spec(spec_file)
    # a key merged in (<<: *anchor) and given again is YAML's override, as PyYAML reads it
    spec_file.write_text("models: [{<<: &m {name: resnet18, weights: default}, weights: none, "
                         "num_classes: 2}]\n" + head.split("\n", 1)[1]
                         + "transforms: {rotation: 'rotation:90'}\n")
    (job,) = load_spec(spec_file).jobs()
    assert job.model.weights is None and job.model.num_classes == 2


def test_a_json_spec_file_is_read_as_json_tabs_and_all(tmp_path):
    # load_spec takes "a YAML (or JSON) file": JSON indented with tabs (json.dump(indent="\t"),
    # many editors) is valid JSON but no valid YAML, and was refused as "Expected valid YAML"
    raw = {"models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
           "datasets": [{"kind": "random", "image_size": 32}], "n_images": 2,
           "transforms": {"rotation": "rotation:90"}, "seeds": [3, 4]}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(raw, indent="\t"))
    assert [j.id for j in load_spec(spec_file).jobs()] == [j.id for j in load_spec(raw).jobs()]
    spec_file.write_text(json.dumps(raw), encoding="utf-8-sig")  # a byte-order mark, as YAML takes
    assert [j.id for j in load_spec(spec_file).jobs()] == [j.id for j in load_spec(raw).jobs()]
    # a key given twice is refused, as in a YAML file (json, too, kept the last)
    spec_file.write_text(json.dumps(raw)[:-1] + ', "seeds": [5]}')
    with pytest.raises(SpecError, match=r"Expected valid JSON \(a .json file\), but parsing failed: "
                                        r"found the key 'seeds' twice"):
        load_spec(spec_file)


def test_a_binary_file_given_as_the_spec_is_a_spec_error_naming_it(tmp_path, capsys):
    # Python's codec error reached the user alone ("'utf-8' codec can't decode byte 0xd0 ...")
    spec_file = tmp_path / "model.pt"
    spec_file.write_bytes(b"models: []\n\xd0\x00\xff")
    with pytest.raises(SpecError, match=r"byte 11 is no UTF-8 text \(b'\\xd0'\); is it the sweep spec\?") as err:
        load_spec(spec_file)
    assert str(spec_file) in str(err.value)
    assert sweep_main(["run", str(spec_file), "--dry-run"]) == 2
    assert f"Invalid sweep spec {spec_file}" in capsys.readouterr().err


def test_across_images_on_a_single_image_is_refused_in_the_spec(folder):
    # it passed the spec and failed every job on its worker ("at least two images")
    def spec(n):
        return _spec(folder, datasets=[{"name": "one", "kind": "random", "image_size": 32, "n_images": n}],
                     transforms={"rotation": "rotation:90"}, models=MODELS[:1],
                     vector_mode="across_images", n_images=None)

    _one_problem(spec(1), r"^vector_mode: Expected n_images >= 2 for 'across_images' .* "
                          r"dataset 'one' has 1\.$")
    assert load_spec(spec(2)).datasets[0].n_images == 2


def test_a_results_folder_that_cannot_be_made_is_refused_before_ray_starts(folder, tmp_path, capsys):
    # /proc/x or a path under a file failed with a bare errno after Ray had started (10-20 s);
    # --dry-run listed the jobs as pending
    import yaml

    (tmp_path / "afile").write_text("mine")
    out = tmp_path / "afile" / "results"
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(folder)))
    with pytest.raises(OSError, match=re.escape(f"Cannot create the results folder (--out) {str(out)!r}")):
        run_sweep(_spec(folder), out=out, address="ray://127.0.0.1:1")  # never reached
    for argv in (["run", str(spec_file), "--out", str(out)],
                 ["run", str(spec_file), "--out", str(out), "--dry-run"]):
        assert sweep_main(argv) == 2
        assert "Cannot create the results folder (--out)" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "mine"
    # the check makes and removes what it needs: a dry run leaves no folder behind
    fresh = tmp_path / "new" / "results"
    assert sweep_main(["run", str(spec_file), "--out", str(fresh), "--dry-run"]) == 0
    assert not (tmp_path / "new").exists()


def test_repeated_jobs_are_named_by_their_entries_and_the_spec_file(folder, tmp_path):
    # the error gave an id ("1 repeat (ids 749f429c5ef19c53)") and "spec", not the file
    import yaml

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(_spec(folder, models=MODELS[:1], transforms={
        "quarter": "rotation", "turns": "rotation:90,rotation:180,rotation:270"})))
    with pytest.raises(SpecError) as err:
        load_spec(spec_file)
    (problem,) = err.value.problems
    label = MODELS[0].get("label", MODELS[0]["name"])
    assert (f"'{label} / tiny / quarter / seed 0' and '{label} / tiny / turns / seed 0' measure "
            "the same") in problem
    assert "transform family" in problem
    assert str(err.value).startswith(f"Invalid sweep spec {spec_file} (1 problem)")


def test_shift_scores_refuse_points_of_runs_not_told_apart():
    # two seeds' points without their seed column: each shift's mean was over the points of
    # both runs, said to be one seed
    rows = [{"model": "a", "dataset": "d", "transforms": "translation", "seed": seed,
             "point": point, "part": "early", "transform": f"translation({s},{s})",
             "family": "translation", "metric": "correlation", "channel": 0.1 * s + seed,
             "layer": 0.2 * s + seed, "undefined_fraction": 0.0}
            for seed in (0, 1) for point in ("p0", "p1") for s in (1, 2)]
    table = pd.DataFrame(rows)
    with pytest.raises(ValueError, match=r"Expected one row per seed of each dataset, metric, "
                                         r"transforms, family, model, point, transform, but 8 rows "
                                         r"repeat theirs \(the first: dataset 'd', .* seed 0\)"):
        analysis.shift_scores(table.drop(columns="seed"))
    got = analysis.shift_scores(table)  # told apart: the mean of the seeds' means
    row = got[got.dy == 2].iloc[0]
    assert row.seeds == 2 and row.channel == pytest.approx(np.mean([0.2, 1.2]))


def test_a_torchvision_datasets_16_bit_images_are_scaled_not_clipped():
    # PIL's convert("RGB") clipped a 16-bit image to white: every pixel above 255 read as 255
    from PIL import Image

    from equifast.data import _eight_bits
    from equifast.distributed.sweep import _TorchvisionImages

    pixels = (np.arange(32 * 32).reshape(32, 32) * 63).astype(np.uint16)

    class Sixteen(torch.utils.data.Dataset):
        classes = ["a", "b"]

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Image.fromarray(pixels), 1

    x, y = _TorchvisionImages(Sixteen(), "Sixteen")[0]
    assert x.mode == "RGB" and y == 1
    for channel in np.moveaxis(np.asarray(x), -1, 0):  # as an image file of these pixels is read
        np.testing.assert_array_equal(channel, _eight_bits(pixels))
    assert len(np.unique(np.asarray(x))) > 200  # not white where the pixels pass 255


def _finished_sweep_status(tmp_path, capsys):
    """A results folder of a finished sweep (its status.json alone) and what `sweep status
    --out FOLDER --json` prints of it."""
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "status.json").write_text(json.dumps({"sweep": "s", "state": "finished", "pid": 1,
                                                "host": socket.gethostname(), "running_ids": []}))
    assert sweep_main(["status", "--out", str(out), "--json"]) == 0
    return out, json.loads(capsys.readouterr().out)


def test_status_and_report_take_the_folder_as_an_argument_too(tmp_path, capsys):
    # `equifast sweep status runs/x` failed with the top-level usage: "unrecognized arguments"
    out, with_flag = _finished_sweep_status(tmp_path, capsys)
    assert sweep_main(["status", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == with_flag
    (tmp_path / "mine").mkdir()
    assert sweep_main(["report", str(tmp_path / "mine")]) == 2  # the folder given is the one read
    assert f"{str(tmp_path / 'mine')!r} holds no sweep's files" in capsys.readouterr().err
    assert sweep_main(["status", str(out), "--out", str(tmp_path / "mine")]) == 2
    assert "Expected one results folder, but got" in capsys.readouterr().err
    assert sweep_main(["status", str(out), "--out", str(out), "--json"]) == 0  # the same: fine
    assert json.loads(capsys.readouterr().out) == with_flag


def test_status_takes_one_folder_given_both_ways_however_spelled(tmp_path, capsys, monkeypatch):
    # relative as the argument, absolute as --out: one folder, refused as "two"
    out, with_flag = _finished_sweep_status(tmp_path, capsys)
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["status", "sweep", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == with_flag
