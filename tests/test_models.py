"""Models by name and the embedded ImageNet weights (real, offline)."""
import os

import pytest
import torch

from equifast import data
from equifast.models import load_model


def test_embedded_lite0_classifies_real_photos():
    import skimage.data
    from PIL import Image

    model, preprocess = load_model("efficientnet_lite0")
    cat = preprocess(Image.fromarray(skimage.data.chelsea())).unsqueeze(0)
    coffee = preprocess(Image.fromarray(skimage.data.coffee())).unsqueeze(0)
    with torch.no_grad():
        p = model(torch.cat([cat, coffee])).softmax(-1)
    assert p[0].argmax() in (281, 282, 285)   # tabby, tiger cat, Egyptian cat
    assert p[1].argmax() in (967, 968)        # espresso, cup
    # surer in the network they were made for, with its preprocessing (0.919 and 0.967) than in
    # timm's efficientnet_lite0 with ImageNet's mean and std (0.889 and 0.928)
    assert p[0, [281, 282, 285]].sum() > 0.9 and p[1, [967, 968]].sum() > 0.95


def test_embedded_lite0_pads_as_tensorflow():
    # the weights come from TensorFlow: a stride-2 convolution pads "SAME", all of its one
    # pixel after the image; timm's efficientnet_lite0 would pad one on each side
    import torch.nn.functional as F

    model, _ = load_model("efficientnet_lite0")
    x = torch.rand(1, 3, 224, 224)
    w = model.conv_stem.weight
    with torch.no_grad():
        torch.testing.assert_close(model.conv_stem(x), F.conv2d(F.pad(x, (0, 1, 0, 1)), w, stride=2))
    with pytest.raises(ValueError, match="no `num_classes` with the embedded ImageNet weights"):
        load_model("efficientnet_lite0", num_classes=10)


def test_weights_as_paths_and_torchvision_members_and_nothing_else(tmp_path):
    from pathlib import Path

    import torchvision

    m, _ = load_model("resnet18", weights=None, num_classes=4)
    torch.save(m.state_dict(), tmp_path / "r18.pt")
    m2, _ = load_model("resnet18", weights=Path(tmp_path / "r18.pt"))  # was random, silently
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    assert m2.fc.out_features == 4
    with pytest.raises(TypeError, match="Expected `weights` to be 'default', 'none', None"):
        load_model("resnet18", weights=False)
    # a member of torchvision's weights is its name: offline, the download is what fails
    from equifast.models import _weights_argument
    assert _weights_argument(torchvision.models.ResNet18_Weights.IMAGENET1K_V1) == \
        "ResNet18_Weights.IMAGENET1K_V1"


def test_a_weights_path_under_home_is_expanded_from_python_as_on_the_command_line(tmp_path, monkeypatch):
    # "~/ckpt.pt" from Python: no shell expanded it, and the file "did not exist"
    import equifast as ef
    from equifast.models import check_model_args

    monkeypatch.setenv("HOME", str(tmp_path))
    m, _ = load_model("resnet18", weights=None, num_classes=3)
    torch.save(m.state_dict(), tmp_path / "ckpt.pt")
    check_model_args("resnet18", "~/ckpt.pt")
    m2, _ = load_model("resnet18", weights="~/ckpt.pt")
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    x = torch.rand(2, 3, 32, 32)
    for weights in ("~/ckpt.pt", tmp_path / "ckpt.pt"):  # a Path's meta was as typed, relative
        rep = ef.measure("resnet18", x, weights=weights, transforms=[ef.Rotation(1)], device="cpu")
        assert rep.meta["weights"] == str((tmp_path / "ckpt.pt").resolve())
        assert rep.points.equals(ef.measure(m, x, transforms=[ef.Rotation(1)], device="cpu").points)


def test_num_classes_as_a_numpy_integer_is_a_count(tmp_path):
    # np.int64(7) (a count read from a table) was "Expected `num_classes` to be a whole number"
    import numpy as np

    import equifast as ef
    from equifast.models import ModelArgumentError

    model, _ = load_model("resnet18", weights=None, num_classes=np.int64(7))
    assert model.fc.out_features == 7
    rep = ef.measure("resnet18", torch.rand(2, 3, 32, 32), weights=None, num_classes=np.int64(7),
                     transforms=[ef.Rotation(1)], device="cpu")
    assert rep.meta["num_classes"] == 7 and type(rep.meta["num_classes"]) is int
    for bad in (True, 2.0, np.float32(3), -1):
        with pytest.raises(ModelArgumentError, match="`num_classes` to be a whole number"):
            load_model("resnet18", weights=None, num_classes=bad)


def test_efficientnet_lite0_with_a_checkpoint_warns_it_is_not_the_embedded_network(tmp_path):
    # a checkpoint fine-tuned from the embedded model (tf_efficientnet_lite0, TensorFlow's
    # padding) loaded into timm's efficientnet_lite0 without a word: same keys, other numbers
    import warnings

    import equifast as ef
    from equifast.models import embedded_lite0

    tuned = embedded_lite0()
    torch.save(tuned.state_dict(), tmp_path / "tuned.pt")
    with pytest.warns(ef.EquifastWarning, match="name that model instead"):
        as_named, _ = load_model("efficientnet_lite0", weights=str(tmp_path / "tuned.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right, _ = load_model("tf_efficientnet_lite0", weights=str(tmp_path / "tuned.pt"))
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(right(x), tuned.eval()(x))
        assert not torch.allclose(as_named(x), right(x), atol=1e-3)  # the padding the warning names


def test_a_run_folder_under_home_is_expanded_from_python_as_on_the_command_line(tmp_path, monkeypatch):
    # "~/run" from Python was "neither (no such folder)", though the run was there
    import json

    import equifast as ef
    from equifast.training.recipes import get_recipe
    from equifast.training.trainer import build_model_for

    monkeypatch.setenv("HOME", str(tmp_path))
    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    torch.save(build_model_for(recipe).state_dict(), tmp_path / "run" / "model.pt")
    by_path, _ = load_model(str(tmp_path / "run"))
    by_home, _ = load_model("~/run")
    assert all(torch.equal(a, b) for a, b in zip(by_path.state_dict().values(),
                                                 by_home.state_dict().values()))
    x = torch.rand(2, 1, 28, 28)
    rep = ef.measure("~/run", x, transforms=[ef.Rotation(1)], device="cpu")
    assert rep.meta["model"] == str((tmp_path / "run").resolve())
    assert rep.points.equals(ef.measure(by_path, x, transforms=[ef.Rotation(1)], device="cpu").points)


def test_a_run_folder_as_a_path_object_is_measured_as_its_string(tmp_path):
    # a Path was refused: "Expected `model` to be ... a run folder, but got PosixPath"
    import json

    import equifast as ef
    from equifast.training.recipes import get_recipe
    from equifast.training.trainer import build_model_for

    recipe = get_recipe("cnn7-fmnist6", epochs=1, device="cpu")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.json").write_text(json.dumps(recipe.to_dict()))
    torch.save(build_model_for(recipe).state_dict(), run / "model.pt")
    by_str, _ = load_model(str(run))
    by_path, _ = load_model(run)
    assert all(torch.equal(a, b) for a, b in zip(by_str.state_dict().values(),
                                                 by_path.state_dict().values()))
    x = torch.rand(2, 1, 28, 28)
    rep = ef.measure(run, x, transforms=[ef.Rotation(1)], device="cpu")
    assert rep.meta["model"] == str(run.resolve())
    assert rep.points.equals(ef.measure(by_str, x, transforms=[ef.Rotation(1)], device="cpu").points)


@pytest.mark.parametrize("prefix", ["_orig_mod.", "model.",  # torch.compile's, Lightning's
                                    # stacked: Lightning of a compiled model, DDP in DDP, ...
                                    "model._orig_mod.", "_orig_mod.module.", "module.module."])
def test_wrapped_checkpoints_load(tmp_path, prefix):
    m, _ = load_model("resnet18", weights=None, num_classes=4)
    torch.save({"state_dict": {prefix + k: v for k, v in m.state_dict().items()}}, tmp_path / "w.pt")
    m2, _ = load_model("resnet18", weights=str(tmp_path / "w.pt"))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_googlenet_and_inception_checkpoints_are_built_as_torchvision_builds_its_weights(tmp_path, name):
    # torchvision's own weights turn the input to their normalisation (transform_input) and
    # GoogLeNet's have no aux heads; a checkpoint of them says neither
    import torchvision

    torch.manual_seed(0)
    aux = {"googlenet": False, "inception_v3": True}[name]
    ref = torchvision.models.get_model(name, weights=None, aux_logits=aux, transform_input=True,
                                       init_weights=True).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    m, _ = load_model(name, weights=str(tmp_path / "w.pt"))
    x = torch.rand(1, 3, 80, 80)
    with torch.no_grad():
        assert m.transform_input and torch.equal(m(x), ref(x))


def test_an_unknown_timm_tag_is_a_clear_error():
    from equifast.models import check_model_name

    for call in (lambda: check_model_name("resnet10t.bogus"),
                 lambda: load_model("resnet10t.bogus", weights=None)):
        with pytest.raises(ValueError, match=r"pretrained tag of timm's 'resnet10t', but got "
                                             r"'bogus'; its tags: c3_in1k"):
            call()
    check_model_name("resnet10t.c3_in1k")  # a real tag


def test_random_init_torchvision_and_timm():
    m, pre = load_model("resnet18", weights=None, num_classes=7)
    assert m(torch.rand(1, 3, 32, 32)).shape == (1, 7)
    m, pre = load_model("mixer_s16_224", weights=None, num_classes=3)
    assert not m.training


@pytest.mark.parametrize("name", ["googlenet", pytest.param("inception_v3", marks=pytest.mark.slow)])
def test_random_googlenet_and_inception_are_torchvisions_without_its_warning(name):
    # torchvision warned "The default weight initialization ... will be changed ... please set
    # init_weights=True", which a user of load_model or `equifast measure` cannot pass
    import warnings

    import torchvision

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        want = torchvision.models.get_model(name, weights=None).state_dict()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model, _ = load_model(name, weights=None)
    got = model.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_checkpoint_path_round_trip(tmp_path):
    m, _ = load_model("resnet18", weights=None, num_classes=4)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in m.state_dict().items()}}, path)
    m2, _ = load_model("resnet18", weights=str(path), num_classes=4)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError, match="Did you mean.*resnet50"):
        load_model("resnet5O")


def test_missing_checkpoint_is_clear():
    with pytest.raises(FileNotFoundError, match=r"'/no/such/ckpt\.pt' does not exist and is no such "
                                                r"name\.$"):
        load_model("resnet18", weights="/no/such/ckpt.pt")
    # another case too: "NONE" has no letter in common with "none", and got no hint
    for name, typo, meant in (("resnet18", "non", "none"), ("resnet18", "IMAGENET1K_V3", "IMAGENET1K_V1"),
                              ("resnet18", "defualt", "default"), ("resnet18", "NONE", "none"),
                              ("resnet18", "imagenet1k_v1", "IMAGENET1K_V1"),
                              ("resnet10t", "DEFAULT", "default")):
        with pytest.raises(FileNotFoundError, match=f"'{typo}' does not exist.*; did you mean '{meant}'\\?$"):
            load_model(name, weights=typo)


def test_a_folder_or_a_misnamed_safetensors_file_as_weights_says_so(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(IsADirectoryError, match="is a folder; pass the file in it"):
        load_model("resnet18", weights=str(tmp_path))
    m, _ = load_model("resnet18", weights=None, num_classes=3)
    save_file(m.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="It looks like a .safetensors file: name it so."):
        load_model("resnet18", weights=str(tmp_path / "w.pt"))
    # and the other way round: the safetensors reader's "HeaderTooLarge" said nothing of it
    torch.save(m.state_dict(), tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match=r"t\.safetensors' to be a safetensors file, but it could not "
                                         r"be read \(.*\)\. It looks like a torch\.save file: name it \.pt\.$"):
        load_model("resnet18", weights=str(tmp_path / "t.safetensors"))


@pytest.mark.parametrize("weights", ["a1_in1k", "resnet50.a1_in1k"])
def test_timm_weights_given_as_weights_say_that_timm_names_them_in_the_model_name(weights):
    import timm

    assert "resnet50.a1_in1k" in timm.list_pretrained("resnet50.*")  # torchvision's resnet50 wins the name
    with pytest.raises(FileNotFoundError, match=r"timm names its hub weights in the model name: pass the "
                                                r"model 'resnet50\.a1_in1k' with weights 'default'"):
        load_model("resnet50", weights=weights)
    with pytest.raises(FileNotFoundError, match=r"but 'IMAGENET1K_V3' does not exist and is no such "
                                                r"name; did you mean 'IMAGENET1K_V2'\?$"):
        load_model("resnet50", weights="IMAGENET1K_V3")  # no timm tag: no such advice


def test_embedded_weights_only_for_lite0():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        load_model("resnet18", weights="embedded")


def test_embedded_photos_are_seeded_real_crops():
    a = data.embedded_photos(6, size=32, seed=3)
    b = data.embedded_photos(6, size=32, seed=3)
    assert a.shape == (6, 3, 32, 32) and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 1 and float(a.std()) > 0.05
    assert not torch.equal(a, data.embedded_photos(6, size=32, seed=4))


def test_hub_weights_without_internet_say_what_to_do(monkeypatch):
    import torchvision

    from equifast.models import WeightsUnavailableError

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")  # what urllib raises with no network

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        load_model("resnet18")


_OFFLINE_TIMM = """
import os, sys, time
import torch
from safetensors.torch import save_file
from equifast.models import WeightsUnavailableError, load_model

start = time.monotonic()
try:
    load_model("resnet10t.c3_in1k")
    sys.exit("loaded without a hub or a cache")
except WeightsUnavailableError as err:
    print(f"{time.monotonic() - start:.3f}", str(err).replace("\\n", " "))
# the hub's cache filled on a connected machine is still read offline
random, _ = load_model("resnet10t", weights=None)
repo = sys.argv[1] + "/hub/models--timm--resnet10t.c3_in1k"
snap = repo + "/snapshots/" + "0" * 40
os.makedirs(snap)
os.makedirs(repo + "/refs")
with open(repo + "/refs/main", "w") as f:
    f.write("0" * 40)
save_file({k: v.contiguous() for k, v in random.state_dict().items()}, snap + "/model.safetensors")
cached, _ = load_model("resnet10t.c3_in1k")
x = torch.rand(1, 3, 32, 32)
print(bool(torch.equal(random(x), cached(x))))
"""


def test_timm_hub_weights_offline_fail_at_once_and_a_filled_cache_still_loads(tmp_path):
    # offline, huggingface_hub retried each of the two files timm asks for about 25 s: the
    # clear "could not fetch" came after about a minute. The hub here is a closed port (refused
    # at once, retried the same way), so nothing is downloaded on a connected machine either.
    import subprocess
    import sys

    pytest.importorskip("safetensors")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _OFFLINE_TIMM, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seconds, said = proc.stdout.splitlines()[0].split(" ", 1)
    assert float(seconds) < 15, said
    assert "could not be reached" in said and "--weights none" in said
    assert proc.stdout.splitlines()[1] == "True"


def test_timm_hub_repo_names_are_the_registry_names_of_their_weights(monkeypatch):
    # timm.create_model takes "hf-hub:timm/resnet10t.c3_in1k" (it reads the config from the hub,
    # which offline failed even for random weights); both it and the bare repo id were refused
    # as "no such folder"
    import timm.data

    from equifast.models import WeightsUnavailableError, check_model_args, crop_shape, input_sizes

    want, _ = load_model("resnet10t.c3_in1k", weights=None)
    for name in ("hf-hub:timm/resnet10t.c3_in1k", "HF_HUB:timm/resnet10t.c3_in1k",
                 "timm/resnet10t.c3_in1k"):
        model, pre = load_model(name, weights=None)
        assert type(model) is type(want) and model.pretrained_cfg["tag"] == "c3_in1k"
        assert {k: v.shape for k, v in model.state_dict().items()} == \
               {k: v.shape for k, v in want.state_dict().items()}
        assert input_sizes(name) == input_sizes("resnet10t.c3_in1k")
        # the crop of timm's own evaluation pipeline of the model built (at its test size)
        assert crop_shape(name) == tuple(timm.data.resolve_data_config(
            {}, model=want, use_test_size=True)["input_size"][1:])
        check_model_args(name)
    # one that is no square, which input_sizes cannot give
    oblong = timm.models.get_pretrained_cfg("vit_base_patch16_sapiens2").input_size[1:]
    assert oblong[0] != oblong[1] and crop_shape("vit_base_patch16_sapiens2") == tuple(oblong)
    assert input_sizes("vit_base_patch16_sapiens2") == (None, None) and crop_shape("resnet18") is None
    built = []

    def offline(name, pretrained=False, **kw):
        built.append((name, pretrained))
        raise OSError("Name or service not known")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsUnavailableError, match="--weights none"):
        load_model("hf-hub:timm/resnet10t.c3_in1k")
    assert built == [("resnet10t.c3_in1k", True)]
    # repos that are not a registry name's weights: said so, with the names that are close
    for name in ("hf-hub:timm/resnet10t", "hf-hub:someone/resnet10t.c3_in1k",
                 "timm/resnet10t.c3_in1k@main"):
        with pytest.raises(ValueError, match="hub repo of timm's pretrained weights"):
            load_model(name, weights=None)


def test_checkpoint_of_another_label_set_gets_its_classifier(tmp_path):
    # fine-tuned on 10 classes: loaded by name without saying so
    m, _ = load_model("resnet18", weights=None, num_classes=10)
    torch.save(m.state_dict(), tmp_path / "ten.pt")
    m2, _ = load_model("resnet18", weights=str(tmp_path / "ten.pt"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    # a num_classes the checkpoint contradicts: it was "not a checkpoint of 'resnet18'" and
    # "name the architecture", whose advice could not help
    with pytest.raises(ValueError, match=r"^Expected `num_classes` \(--num-classes\) 5 to be the "
                                         r"classes of `weights` .*ten.pt', but its classifier has 10"):
        load_model("resnet18", weights=str(tmp_path / "ten.pt"), num_classes=5)
    assert load_model("resnet18", weights=str(tmp_path / "ten.pt"), num_classes=10)[0].fc.out_features == 10


def test_safetensors_checkpoints_load_like_torch_save_ones(tmp_path):
    from safetensors.torch import save_file

    m, _ = load_model("resnet18", weights=None, num_classes=10)
    save_file({f"module.{k}": v.contiguous() for k, v in m.state_dict().items()},
              tmp_path / "model.safetensors")  # DataParallel's prefix too, as from torch.save
    m2, _ = load_model("resnet18", weights=str(tmp_path / "model.safetensors"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_bad_checkpoints_say_what_is_wrong(tmp_path):
    (tmp_path / "notes.pt").write_text("not a checkpoint")  # torch.load: KeyError '110'
    with pytest.raises(ValueError) as err:
        load_model("resnet18", weights=str(tmp_path / "notes.pt"))
    assert str(err.value) == (f"Expected `weights` {str(tmp_path / 'notes.pt')!r} to be a checkpoint "
                              "saved with torch.save (or a .safetensors file), but it is neither the "
                              "zip archive nor the pickle torch.save writes.")
    m, _ = load_model("resnet18", weights=None)
    torch.save(m.state_dict(), tmp_path / "r18.pt")
    whole = (tmp_path / "r18.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])  # a copy cut short: one line
    with pytest.raises(ValueError, match=r"^Expected `weights` .*cut\.pt' to be a checkpoint saved "
                                         r"with torch.save, but it could not be read \(RuntimeError: "
                                         r"PytorchStreamReader failed[^\n]*\)$"):
        load_model("resnet18", weights=str(tmp_path / "cut.pt"))
    (tmp_path / "cut.safetensors").write_bytes(b"xx")
    with pytest.raises(ValueError, match=r"cut\.safetensors' to be a safetensors file, but it could "):
        load_model("resnet18", weights=str(tmp_path / "cut.safetensors"))
    with pytest.raises(ValueError, match=r"checkpoint of 'resnet34', but its entries do not fit "
                                         r"that model \(\d+ missing: layer1\.2\.conv1\.weight"):
        load_model("resnet34", weights=str(tmp_path / "r18.pt"))


def test_a_checkpoint_that_fits_in_part_names_its_missing_unexpected_and_reshaped_keys(tmp_path):
    # torch's message listed every missing key first and was cut at 240 characters: the
    # unexpected keys after them, and how many of each, went unsaid
    m, _ = load_model("resnet18", weights=None, num_classes=3)
    own = m.state_dict()
    state = {k: v for k, v in own.items() if not k.startswith("layer4.")}
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)  # a grey-scale stem
    torch.save(state, tmp_path / "part.pt")
    lost = [k for k in own if k.startswith("layer4.")]
    with pytest.raises(ValueError) as err:
        load_model("resnet18", weights=str(tmp_path / "part.pt"))
    assert str(err.value) == (
        f"Expected `weights` {str(tmp_path / 'part.pt')!r} to be a checkpoint of 'resnet18', but its "
        f"entries do not fit that model ({len(lost)} missing: {', '.join(lost[:3])}, ...; "
        "1 unexpected: extra.weight; 1 of another shape: conv1.weight [64, 1, 7, 7] for [64, 3, 7, 7]). "
        "Name the architecture the checkpoint was saved from.")
    # a backbone saved inside another module: the prefix that would make every key fit
    torch.save({"backbone." + k: v for k, v in own.items()}, tmp_path / "bb.pt")
    with pytest.raises(ValueError, match=f"{len(own)} missing: conv1.weight, .*; {len(own)} unexpected: "
                                         r"backbone\.conv1\.weight, .*its keys carry the prefix "
                                         r"'backbone\.' \(only wrappers'"):
        load_model("resnet18", weights=str(tmp_path / "bb.pt"))
    # a wrapper's prefix not on every key (a LightningModule's weighted loss beside its model):
    # it was "carry the prefix 'model.' (only ... model. are stripped)"
    torch.save({"state_dict": {**{"model." + k: v for k, v in own.items()},
                               "criterion.weight": torch.ones(3)}}, tmp_path / "pl.pt")
    with pytest.raises(ValueError, match=r"carry the wrapper's prefix 'model\.', which is stripped "
                                         r"only where every key carries it, and these do not "
                                         r"\(1: criterion\.weight\); save the state dict of the "
                                         r"wrapped model alone"):
        load_model("resnet18", weights=str(tmp_path / "pl.pt"))
    # without the loss's keys it loads, as the model's own state dict does
    torch.save({"model." + k: v for k, v in own.items()}, tmp_path / "alone.pt")
    m, _ = load_model("resnet18", weights=str(tmp_path / "alone.pt"), num_classes=len(own["fc.bias"]))
    assert all(torch.equal(own[k], v) for k, v in m.state_dict().items())


def test_a_checkpoint_torch_loads_is_loaded_as_torch_loads_it(tmp_path):
    # checked by its keys before torch, a checkpoint without num_batches_tracked (saved before
    # torch 0.4.1, or converted), which torch fills in, was refused as 20 keys missing
    m, _ = load_model("resnet18", weights=None, num_classes=3)
    state = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    want = torch.nn.Module.state_dict(m)
    torch.save(state, tmp_path / "old.pt")
    loaded, _ = load_model("resnet18", weights=str(tmp_path / "old.pt"), num_classes=3)
    got = loaded.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in state)
    assert all(int(got[k]) == 0 for k in got if k.endswith("num_batches_tracked"))


def test_check_checkpoint_says_what_load_model_says_without_reading_the_weights(tmp_path, monkeypatch):
    # a sweep's driver checks its checkpoints so before any job is submitted: the same verdict
    # as load_model's on the workers, from the checkpoint's shapes on the meta device
    import timm
    from safetensors.torch import save_file

    from equifast.models import ModelArgumentError, check_checkpoint

    own = load_model("resnet18", weights=None, num_classes=10)[0].state_dict()
    torch.save(own, tmp_path / "ten.pt")
    save_file(own, str(tmp_path / "ten.safetensors"))
    torch.save({k: v for k, v in own.items() if not k.endswith("num_batches_tracked")},
               tmp_path / "old.pt")  # torch fills them in: fits
    torch.save({**own, "conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "grey.pt")
    torch.save({"backbone." + k: v for k, v in own.items()}, tmp_path / "bb.pt")
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), tmp_path / "headless.pt")
    cases = [("resnet18", "ten.pt", None), ("resnet18", "ten.pt", 5), ("resnet18", "ten.safetensors", 10),
             ("resnet34", "ten.safetensors", None), ("resnet18", "old.pt", 10), ("resnet18", "grey.pt", None),
             ("resnet18", "bb.pt", None), ("resnet10t", "headless.pt", None), ("resnet10t", "headless.pt", 0),
             ("resnet34", "ten.pt", None)]
    loads = torch.load
    maps = []
    for name, file, classes in cases:
        weights = str(tmp_path / file)
        try:
            load_model(name, weights=weights, num_classes=classes)
            want = None
        except (ValueError, ModelArgumentError) as err:
            want = (type(err), str(err))
        monkeypatch.setattr(torch, "load", lambda *a, **k: maps.append(k.get("map_location")) or loads(*a, **k))
        try:
            check_checkpoint(name, weights, classes)
            got = None
        except (ValueError, ModelArgumentError) as err:
            got = (type(err), str(err))
        monkeypatch.setattr(torch, "load", loads)
        assert got == want, (name, file, classes)
    assert maps and set(maps) == {"meta"}  # no tensor's data read
    assert sum(1 for name, file, classes in cases if file.endswith(".pt")) <= len(maps)


def test_check_checkpoint_of_a_model_the_meta_device_cannot_build(tmp_path):
    # torchvision's RegNets compute their widths with .tolist() as they are built: on the meta
    # device a valid checkpoint (a sweep's spec) failed with "Cannot copy out of meta tensor"
    import torchvision

    from equifast.models import check_checkpoint

    own = torchvision.models.regnet_x_400mf(num_classes=10).state_dict()
    torch.save(own, tmp_path / "ten.pt")
    torch.save({k: v for k, v in own.items() if k != "fc.bias"}, tmp_path / "lacks.pt")
    check_checkpoint("regnet_x_400mf", str(tmp_path / "ten.pt"), 10)  # load_model takes it
    load_model("regnet_x_400mf", weights=str(tmp_path / "ten.pt"), num_classes=10)
    with pytest.raises(ValueError) as want:
        load_model("regnet_x_400mf", weights=str(tmp_path / "lacks.pt"))
    with pytest.raises(ValueError) as got:
        check_checkpoint("regnet_x_400mf", str(tmp_path / "lacks.pt"))
    assert str(got.value) == str(want.value)


def test_timm_model_without_pretrained_weights_says_what_to_do():
    import timm
    # a small model in timm's registry with no pretrained weights (the names vary by version)
    bare = set(timm.list_models()) - {n.split(".")[0] for n in timm.list_models(pretrained=True)}
    name = sorted(n for n in bare if "pico" in n)[0]
    with pytest.raises(ValueError, match=f"no pretrained weights for '{name}'.*--weights none"):
        load_model(name)


def test_a_folder_named_like_a_model_does_not_hide_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet18").mkdir()  # e.g. an earlier --out
    model, _ = load_model("resnet18", weights=None, num_classes=3)
    assert model.fc.out_features == 3


def test_torchvision_weights_by_name_load_with_their_own_preprocessing(monkeypatch):
    import torchvision

    from equifast.models import torchvision_weights

    V1 = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    asked = []

    def offline(name, weights=None, **kw):  # what would be downloaded, built without it
        asked.append(weights)
        return torchvision.models.resnet50(**kw)

    monkeypatch.setattr(torchvision.models, "get_model", offline)
    for name in ("IMAGENET1K_V1", "ResNet50_Weights.IMAGENET1K_V1"):
        assert torchvision_weights("resnet50", name) is V1
        _, pre = load_model("resnet50", weights=name)
        assert asked.pop() is V1
        assert pre.resize_size == [256]  # V1's preset; the default (V2) resizes to 232
    _, pre = load_model("resnet50")
    assert asked.pop() is torchvision.models.ResNet50_Weights.IMAGENET1K_V2 and pre.resize_size == [232]
    # not names of resnet50's weights: a path that is not there, said with the names it takes
    for bad in ("IMAGENET1K_V3", "EfficientNet_B0_Weights.IMAGENET1K_V1"):
        assert torchvision_weights("resnet50", bad) is None
        with pytest.raises(FileNotFoundError, match="or a name of its torchvision weights "
                                                    r"\(IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT\)"):
            load_model("resnet50", weights=bad)
    assert torchvision_weights("resnet10t", "IMAGENET1K_V1") is None  # timm: tags in the name
    assert not asked


def test_torchvision_preprocessing_is_the_models_own_whatever_the_weights():
    _, pre = load_model("efficientnet_b3", weights=None)
    assert data.input_size(pre) == 300  # its weights' preset: resize 320, crop 300


def test_torchvision_preset_only_for_the_size_the_model_is_built_for():
    import torchvision

    from equifast.models import _torchvision_preprocess

    with torch.device("meta"):  # no memory for the weights
        vit_h = torchvision.models.vit_h_14()  # built for 224; its default weights take 518
    assert data.input_size(_torchvision_preprocess("vit_h_14", vit_h)) == 224


@pytest.mark.parametrize("weights", ["other.pt", None, "none"])
def test_a_run_folder_takes_no_weights(tmp_path, weights):
    # random weights too: the trained model.pt was loaded while the report said None
    (tmp_path / "recipe.json").write_text("{}")  # refused before the run is read
    with pytest.raises(ValueError, match="no `weights` or `num_classes` for the run folder"):
        load_model(str(tmp_path), weights=weights)


def test_checkpoint_under_model_key_and_weights_none_string(tmp_path):
    m, _ = load_model("resnet18", weights=None, num_classes=4)
    torch.save({"model": m.state_dict(), "epoch": 3}, tmp_path / "run.pt")  # a training checkpoint
    m2, _ = load_model("resnet18", weights=str(tmp_path / "run.pt"), num_classes=4)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    a, _ = load_model("resnet18", weights="none", num_classes=3)  # the CLI's --weights none
    assert a.fc.out_features == 3
    assert not a.training and not m2.training  # torchvision models come back in eval mode


def test_checkpoint_classes_are_read_from_the_last_linear(tmp_path):
    # mobilenet_v3_small's classifier is Linear(576, 1024) then Linear(1024, classes)
    m, _ = load_model("mobilenet_v3_small", weights=None, num_classes=6)
    torch.save(m.state_dict(), tmp_path / "six.pt")
    m2, _ = load_model("mobilenet_v3_small", weights=str(tmp_path / "six.pt"))
    assert m2.classifier[-1].out_features == 6
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    # classes given explicitly are kept: a checkpoint of another size is refused, saying so
    with pytest.raises(ValueError, match="but its classifier has 6; leave it out"):
        load_model("mobilenet_v3_small", weights=str(tmp_path / "six.pt"), num_classes=4)


def test_checkpoint_classes_are_read_from_a_conv_classifier(tmp_path):
    # SqueezeNet's classifier is a 1x1 conv on the map, timm DLA's a 1x1 conv on the pooled map
    import timm
    import torchvision

    m = torchvision.models.squeezenet1_1(num_classes=10)
    torch.save(m.state_dict(), tmp_path / "sq.pt")
    m2, _ = load_model("squeezenet1_1", weights=str(tmp_path / "sq.pt"))
    assert m2.classifier[1].out_channels == 10 and m2.num_classes == 10
    m = timm.create_model("dla46_c", pretrained=False, num_classes=10)
    torch.save(m.state_dict(), tmp_path / "dla.pt")
    m2, _ = load_model("dla46_c", weights=str(tmp_path / "dla.pt"))
    assert m2.fc.out_channels == 10 and m2.num_classes == 10
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.eval()(x), m2(x))


def test_a_timm_model_built_without_a_classifier_is_refused_unless_asked(tmp_path):
    # eva02's only weights are masked-image-modelling features: timm builds it with num_classes=0
    name = "eva02_tiny_patch14_224"
    with pytest.raises(ValueError, match=r"timm builds 'eva02_tiny_patch14_224' without one "
                                         r"\(num_classes=0.*pass num_classes=N"):
        load_model(name, weights=None)
    assert load_model(name, weights=None, num_classes=0)[0].num_classes == 0
    assert load_model(name, weights=None, num_classes=7)[0].head.out_features == 7
    # a checkpoint with a classifier gives it its classes; one without is refused too
    m, _ = load_model(name, weights=None, num_classes=5)
    torch.save(m.state_dict(), tmp_path / "five.pt")
    assert load_model(name, weights=str(tmp_path / "five.pt"))[0].head.out_features == 5
    torch.save({k: v for k, v in m.state_dict().items() if not k.startswith("head.")}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match="without one"):
        load_model(name, weights=str(tmp_path / "none.pt"))


def test_a_headless_checkpoint_of_a_timm_classifier_says_to_pass_num_classes_0(tmp_path):
    # saved from timm.create_model(..., num_classes=0): it was "Name the architecture the
    # checkpoint was saved from", which it was
    import timm

    import equifast as ef
    from equifast.models import ModelArgumentError

    m = timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()
    torch.save(m.state_dict(), tmp_path / "features.pt")
    with pytest.raises(ModelArgumentError, match=r"has none \(missing: fc.bias, fc.weight; the "
                                                 r"weights of a headless model\); pass num_classes=0") as got:
        load_model("resnet10t", weights=str(tmp_path / "features.pt"))
    assert got.value.argument == "num_classes"
    x = torch.rand(2, 3, 32, 32)
    rep = ef.measure("resnet10t", x, weights=str(tmp_path / "features.pt"), num_classes=0,
                     transforms=[ef.Rotation(1)], device="cpu")
    assert rep.points.equals(ef.measure(m, x, transforms=[ef.Rotation(1)], device="cpu").points)
    # a classifier's bias alone missing is not that: the keys that do not fit are named
    full = timm.create_model("resnet10t", pretrained=False).state_dict()
    torch.save({k: v for k, v in full.items() if k != "fc.bias"}, tmp_path / "nobias.pt")
    with pytest.raises(ValueError, match=r"do not fit that model \(1 missing: fc.bias\)"):
        load_model("resnet10t", weights=str(tmp_path / "nobias.pt"))


def test_torchvision_only_names_are_known():
    from equifast.models import check_model_name, is_known_model

    assert is_known_model("vit_b_16") and is_known_model("efficientnet_lite0")  # torchvision, timm
    assert not is_known_model("resnet5O")
    check_model_name("vit_b_16")  # no error


def test_a_pickled_module_is_not_a_state_dict(tmp_path):
    m, _ = load_model("resnet18", weights=None, num_classes=2)
    torch.save(m, tmp_path / "whole.pt")  # the module itself, not its state dict
    with pytest.raises(ValueError, match=r"hold tensors \(a state dict\), but it holds Python "
                                         r"objects that reading it would run code of \(\d+: "
                                         r"torch.nn.modules"):
        load_model("resnet18", weights=str(tmp_path / "whole.pt"))
    torch.save([m.state_dict()], tmp_path / "list.pt")  # readable, but no state dict in it
    with pytest.raises(ValueError, match="to hold a state dict, but got list"):
        load_model("resnet18", weights=str(tmp_path / "list.pt"))


def test_checkpoints_are_read_without_running_their_code(tmp_path):
    import argparse

    import numpy as np

    class Payload:  # what a malicious checkpoint would hide: code run while unpickling
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "ran"),))

    m, _ = load_model("resnet18", weights=None, num_classes=2)
    torch.save({"state_dict": m.state_dict(), "hook": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"run code of \(1: posix.mkdir\)"):
        load_model("resnet18", weights=str(tmp_path / "evil.pt"))
    assert not (tmp_path / "ran").exists()
    # what training scripts save beside the weights is plain data, and is read
    torch.save({"state_dict": m.state_dict(), "args": argparse.Namespace(lr=0.1, model="resnet18"),
                "epoch": 3, "best": np.float64(0.93), "history": np.zeros(4, np.float32)},
               tmp_path / "timm.pt")
    m2, _ = load_model("resnet18", weights=str(tmp_path / "timm.pt"))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))


def test_default_preprocess_resizes_to_size_over_crop_pct_then_crops():
    from PIL import Image

    from equifast.models import default_preprocess

    img = Image.new("RGB", (400, 400))
    img.paste((255, 255, 255), (50, 50, 350, 350))  # a white square, 3/4 of the side
    x = default_preprocess()(img)  # resize 400 -> 256 (224 / 0.875): square 192; crop 224
    assert x.shape == (3, 224, 224)
    # a black border of (224 - 192) / 2 = 16 px, white inside (normalised: black < 0 < white)
    assert (x[:, 112, :12] < 0).all() and (x[:, 112, 20:204] > 0).all() and (x[:, 112, 212:] < 0).all()


def test_timm_models_get_timms_evaluation_pipeline_by_name_and_as_modules():
    # by name: at the test size timm evaluates (and publishes accuracies) at, not the training
    # size; as a module: its own pipeline, not ImageNet's defaults (a ViT's mean and std 0.5)
    import timm
    from torchvision import transforms as T

    from equifast.data import input_size
    from equifast.models import load_model, module_preprocess

    _, pre = load_model("resnet50.a1_in1k", weights=None)
    assert input_size(pre) == 288  # trained at 224
    vit = timm.create_model("vit_tiny_patch16_224.augreg_in21k_ft_in1k", pretrained=False)
    norm = [t for t in module_preprocess(vit).transforms if isinstance(t, T.Normalize)][0]
    assert tuple(norm.mean) == (0.5, 0.5, 0.5) and tuple(norm.std) == (0.5, 0.5, 0.5)
    plain = [t for t in module_preprocess(torch.nn.Conv2d(3, 3, 1)).transforms
             if isinstance(t, T.Normalize)][0]
    assert tuple(plain.mean) == (0.485, 0.456, 0.406)


def test_a_module_of_one_input_channel_gets_a_grey_pipeline():
    # timm's in_chans=1 keeps its RGB statistics: measure(model) made RGB images for it and the
    # model failed, "expected input to have 1 channels, but got 3"
    import timm
    from torchvision import transforms as T
    from torchvision.transforms.functional import rgb_to_grayscale

    import equifast as ef
    from equifast.data import embedded_photos, input_shape
    from equifast.models import module_preprocess

    model = timm.create_model("resnet18", pretrained=False, in_chans=1, num_classes=10).eval()
    rgb = timm.data.resolve_data_config({}, model=model, use_test_size=True)
    pre = module_preprocess(model)
    (norm,) = [t for t in pre.transforms if isinstance(t, T.Normalize)]
    assert norm.mean == pytest.approx([sum(rgb["mean"]) / 3])
    assert norm.std == pytest.approx([sum(rgb["std"]) / 3])
    seen = []
    model.conv1.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    report = ef.measure(model, n_images=2, batch_size=2, transforms=[ef.Flip()])
    assert report.meta["n_images"] == 2
    # the embedded photos, grey (PIL's weights), normalised by the mean of the means and stds
    photos = rgb_to_grayscale(embedded_photos(2, size=input_shape(pre), seed=0))
    assert any(x.shape == photos.shape and torch.allclose(x, (photos - norm.mean[0]) / norm.std[0],
                                                          atol=1e-5) for x in seen)
    plain = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten())
    (norm,) = [t for t in module_preprocess(plain).transforms if isinstance(t, T.Normalize)]
    assert norm.mean == pytest.approx([sum((0.485, 0.456, 0.406)) / 3])


def test_a_module_of_one_input_size_gets_a_pipeline_of_that_size():
    # a ViT built at 96 pixels (timm's img_size, torchvision's image_size) got the 224-pixel
    # pipeline of its config or ImageNet's: measure(model) failed, "this model takes only 96x96"
    import warnings

    import timm
    import timm.data
    from torchvision.models.vision_transformer import VisionTransformer

    import equifast as ef
    from equifast.data import input_size
    from equifast.models import module_preprocess
    from equifast.points.structure import _fixed_input_size

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, depth=1,
                            num_classes=10).eval()
    tv_vit = VisionTransformer(image_size=64, patch_size=16, num_layers=1, num_heads=1,
                               hidden_dim=16, mlp_dim=16, num_classes=10).eval()
    for model in (vit, tv_vit):
        assert input_size(module_preprocess(model)) == _fixed_input_size(model)[0]
    resnet = timm.create_model("resnet18", pretrained=False)  # any size: its config's test size
    test_size = timm.data.resolve_data_config({}, model=resnet, use_test_size=True)["input_size"][-1]
    assert input_size(module_preprocess(resnet)) == test_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = ef.measure(vit, n_images=2, transforms=[ef.Rotation(1)])
    assert report.points.loc[report.points["point"] == "blocks.0", "shape"].item() == "192x6x6"


def test_a_module_of_one_non_square_input_size_gets_a_pipeline_and_photos_of_that_size(tmp_path):
    # a ViT built at 64 x 96 got the 224-pixel pipeline of its config (only a square size was
    # taken from the model), and the embedded photos were square: measure failed on a folder
    # and without images, "this model takes only 64x96 images"
    import warnings

    import numpy as np
    import timm
    import timm.data
    from PIL import Image

    import equifast as ef
    from equifast.data import embedded_photos, input_shape
    from equifast.models import default_preprocess, module_preprocess

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 96), depth=1,
                            num_classes=10).eval()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 150, 3), dtype=np.uint8))
    cfg = timm.data.resolve_data_config({}, model=vit, use_test_size=True)
    timms = timm.data.create_transform(**{**cfg, "input_size": (3, 64, 96)})
    assert torch.equal(module_preprocess(vit)(img), timms(img))
    assert input_shape(module_preprocess(vit)) == (64, 96)
    assert default_preprocess((64, 96))(img).shape == (3, 64, 96)
    photos = embedded_photos(3, (64, 96), seed=1)
    assert photos.shape == (3, 3, 64, 96) and float(photos.std()) > 0.05
    assert torch.equal(embedded_photos(3, (64, 64), seed=1), embedded_photos(3, 64, seed=1))
    for i in range(2):
        img.save(tmp_path / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for images in (None, str(tmp_path)):
            report = ef.measure(vit, images, n_images=2, transforms=[ef.Flip("horizontal")])
            assert report.points.loc[report.points["point"] == "blocks.0", "shape"].item() == "192x4x6"


def test_load_model_and_the_sweep_spec_check_model_arguments_with_one_public_function():
    import ast
    import pickle
    from pathlib import Path

    from equifast.models import ModelArgumentError, check_model_args

    cases = [(("resnet10t.c3_in1kk",), "name", r"^Expected a pretrained tag of timm's 'resnet10t'"),
             (("resnet18", "embedded"), "weights", r"^Expected weights='embedded' only with "),
             (("resnet18", "default", 10), "num_classes",
              r"^Expected 1000 \(the classes of the default weights of 'resnet18'\) or none, but got 10"),
             (("efficientnet_lite0", "default", 10), "num_classes",
              r"^Expected 1000 or no `num_classes` with the embedded ImageNet weights"),
             (("eva02_tiny_patch14_224", None), "num_classes", r"^Expected a classifier, but timm builds"),
             # torchvision built a classifier of no outputs, then failed deep in the measure
             (("resnet18", None, 0), "num_classes", r"^Expected `num_classes` >= 1 for torchvision's"),
             (("resnet10t", None, -1), "num_classes", r"^Expected `num_classes` to be a whole number"),
             (("resnet10t", None, 2.5), "num_classes", r"^Expected `num_classes` to be a whole number")]
    for args, argument, message in cases:
        with pytest.raises(ModelArgumentError, match=message) as err:
            check_model_args(*args)
        assert err.value.argument == argument
        again = pickle.loads(pickle.dumps(err.value))  # as a sweep worker's error travels
        assert (type(again), str(again), again.argument) == (ModelArgumentError, str(err.value), argument)
    for args in [("resnet18", "IMAGENET1K_V1", 1000), ("resnet18", None, 10), ("resnet10t", "default", 10),
                 ("eva02_tiny_patch14_224", None, 0), ("efficientnet_lite0", None, 10)]:
        check_model_args(*args)
    # the spec looks for a checkpoint beside itself, not in the working folder
    check_model_args("eva02_tiny_patch14_224", "ckpt.pt", check_file=False)
    # load_model says the same before building (torchvision's own error was terser)
    with pytest.raises(ValueError, match=r"Expected 1000 \(the classes of the default weights of "
                                         r"'resnet18'\) or none, but got 10"):
        load_model("resnet18", num_classes=10)
    # the spec reads no private names of equifast.models
    tree = ast.parse((Path(__file__).parents[1] / "distributed" / "spec.py").read_text())
    imported = [a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and node.module in ("equifast.models", "models") for a in node.names]
    assert "check_model_args" in imported and not [n for n in imported if n.startswith("_")]


def test_a_timm_models_classifier_is_the_layer_its_config_names():
    import timm

    from equifast.models import _classifier

    m = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    assert _classifier(m) == ("fc", 10)
    # distilled: the first of its two heads, as the config names them
    m = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=3, depth=1)
    assert m.pretrained_cfg["classifier"] == ("head", "head_dist") and _classifier(m) == ("head", 3)
    # a config naming no layer of the model: found by the scan
    m = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    m.pretrained_cfg = {**m.pretrained_cfg, "classifier": "no_such_head"}
    assert _classifier(m) == ("fc", 10)
    m = timm.create_model("resnet10t", pretrained=False, num_classes=0)  # headless: the config's name
    assert _classifier(m) == ("fc", 0)


def _measure_cli(tmp_path, capsys, *argv):
    """``equifast measure`` with ``argv``: (exit status, stdout, stderr)."""
    from equifast.cli import main

    status = main(["measure", "--transforms", "rotation:90", "--n-images", "1", "--no-progress",
                   "--out", str(tmp_path / "out"), *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_weights_path_that_is_no_readable_file_is_refused_before_anything_is_printed(tmp_path, capsys):
    from equifast.models import check_model_args

    missing = str(tmp_path / "no" / "such.pt")
    with pytest.raises(FileNotFoundError, match=f"but {missing!r} does not exist and is no such name"):
        check_model_args("resnet18", missing)
    with pytest.raises(FileNotFoundError, match=f"checkpoint file, but {missing!r} does not exist"):
        check_model_args("resnet10t", missing)  # timm: no torchvision names to offer
    with pytest.raises(IsADirectoryError, match="is a folder; pass the file in it"):
        check_model_args("resnet18", str(tmp_path))
    # the header line was printed (and the model built) before the file was looked for
    status, out, err = _measure_cli(tmp_path, capsys, "--model", "resnet18", "--weights", missing)
    assert (status, out) == (2, "") and err.count("\n") == 1 and repr(missing) in err, (out, err)
    assert not (tmp_path / "out").exists()
    # a real checkpoint passes, and loads
    m, _ = load_model("resnet18", weights=None, num_classes=3)
    torch.save(m.state_dict(), tmp_path / "r18.pt")
    check_model_args("resnet18", str(tmp_path / "r18.pt"))
    assert load_model("resnet18", weights=str(tmp_path / "r18.pt"))[0].fc.out_features == 3
    if os.geteuid() != 0:  # root reads any file
        os.chmod(tmp_path / "r18.pt", 0)
        with pytest.raises(PermissionError, match="r18.pt' to be a checkpoint file this user can read"):
            check_model_args("resnet18", str(tmp_path / "r18.pt"))


def test_a_folder_without_recipe_or_a_file_as_the_model_is_refused_before_anything_is_printed(
        tmp_path, capsys, monkeypatch):
    from PIL import Image

    from equifast.models import check_model_name

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    run = tmp_path / "run"  # a run of `equifast train` whose recipe.json is gone
    run.mkdir()
    m, _ = load_model("resnet18", weights=None, num_classes=3)
    torch.save(m.state_dict(), run / "model.pt")
    for folder in (images, run):
        with pytest.raises(ValueError, match=f"but {str(folder)!r} is a folder without recipe.json. "
                                             "Pass a model name, and a checkpoint"):
            check_model_name(str(folder))
        with pytest.raises(ValueError, match="is a folder without recipe.json"):
            load_model(str(folder))
        status, out, err = _measure_cli(tmp_path, capsys, "--model", str(folder))
        assert (status, out) == (2, "") and err.count("\n") == 1, (out, err)
        assert "(it holds recipe.json, and model.pt or checkpoint.pt)" in err and "(--weights PATH)" in err
    # a checkpoint given as the model: its architecture is the model, it the weights
    ckpt = str(run / "model.pt")
    with pytest.raises(ValueError, match=f"but {ckpt!r} is a file. Pass the architecture it was "
                                         f"saved from as the model and the checkpoint as its weights"):
        check_model_name(ckpt)
    with pytest.raises(ValueError, match="is a file"):
        load_model(ckpt)
    status, out, err = _measure_cli(tmp_path, capsys, "--model", ckpt)
    assert (status, out) == (2, "") and f"(--model ARCH --weights {ckpt})" in err, (out, err)
    # with its recipe, the folder is a run; a folder named like a model is that model
    (run / "recipe.json").write_text("{}")
    check_model_name(str(run))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "resnet18").mkdir()
    check_model_name("resnet18")
