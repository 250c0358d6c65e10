"""The :mod:`torch.fx` graph of a model, for ``method="fx"``: tracer options for timm models,
and clones of values a later in-place operation would overwrite."""
from __future__ import annotations

import operator
import re
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from .structure import modes_kept


def _tracer_kwargs() -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {}
    try:
        from timm.models._features_fx import get_notrace_functions, get_notrace_modules

        kwargs = {"leaf_modules": list(get_notrace_modules()),
                  "autowrap_functions": list(get_notrace_functions())}
    except ImportError:  # timm is optional for tracing torchvision and plain models
        pass
    try:  # torchvision's defaults (torchvision.ops leaves), exactly as create_feature_extractor
        from torchvision.models.feature_extraction import _set_default_tracer_kwargs

        kwargs = _set_default_tracer_kwargs(kwargs)
    except ImportError:
        pass
    return kwargs


class _HooksOfItsOwn(RuntimeError):
    """A model fx cannot read right: its own forward hooks are not in a graph of its forward."""


def _check_no_hooks_of_its_own(model: nn.Module) -> None:
    """fx traces ``model.forward``: forward (pre-)hooks on the model itself are not in its
    graph (those on its submodules are). An input normalised by a pre-hook, or logits scaled
    by a hook, came out as if the hooks were not there."""
    if model._forward_pre_hooks or model._forward_hooks:
        raise _HooksOfItsOwn(f"{type(model).__name__} has forward hooks of its own, which a "
                             "torch.fx graph of its forward leaves out")


class _Graph:
    """The eval-mode graph of ``model`` with torchvision's node names."""

    def __init__(self, model: nn.Module):
        from torchvision.models.feature_extraction import NodePathTracer

        _check_no_hooks_of_its_own(model)
        with modes_kept(model):
            model.eval()
            tracer = NodePathTracer(**_tracer_kwargs())
            graph = tracer.trace(model)
        self.nodes = [n for n in graph.nodes]
        self.qualname = {n: tracer.node_to_qualname[n] for n in self.nodes if n in tracer.node_to_qualname}
        self.order = {self.qualname[n]: i for i, n in enumerate(self.nodes) if n in self.qualname}

    def output_of(self, module: str) -> str:
        """The last node inside ``module`` ('' is the model: the node it returns)."""
        if module == "":
            out = [n for n in self.nodes if n.op == "output"][-1]
            arg = out.args[0]
            if not isinstance(arg, torch.fx.Node) or arg not in self.qualname:
                raise RuntimeError("the model's output is not a single traced tensor")
            return self.qualname[arg]
        pat = re.compile(rf"^{re.escape(module)}(\.|$)")
        hits = [q for q in self.order if pat.match(q)]
        if not hits:
            raise RuntimeError(f"no fx node inside module {module!r}")
        return max(hits, key=self.order.__getitem__)

    def input_of(self, module: str) -> str:
        for n in self.nodes:
            if n.op == "call_module" and n.target == module:
                # its first argument, also where given by keyword (a head called as fc(input=x))
                arg = n.args[0] if n.args else next(iter(n.kwargs.values()), None)
                if isinstance(arg, torch.fx.Node) and arg in self.qualname:
                    return self.qualname[arg]
        raise RuntimeError(f"module {module!r} is not called as a leaf on a traced value")

    def resolve(self, name: str) -> Optional[str]:
        """A node name or a prefix of node names (torchvision's shortcut) -> the full name."""
        if name in self.order:
            return name
        try:
            return self.output_of(name)
        except RuntimeError:
            return None


def _fx_extractor(model: nn.Module, nodes: Sequence[str]) -> nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor

    _check_no_hooks_of_its_own(model)
    ret = {n: f"p{i}" for i, n in enumerate(dict.fromkeys(nodes))}
    # it traces in train and eval mode, then sets every module to the model's own mode: a
    # frozen batch norm of a model being fine-tuned would train after
    with modes_kept(model):
        ext = create_feature_extractor(model, eval_return_nodes=ret, train_return_nodes=ret,
                                       tracer_kwargs=_tracer_kwargs(), suppress_diff_warning=True)
    for graph in {id(g): g for g in (ext.train_graph, ext.eval_graph)}.values():
        _copy_what_is_overwritten(ext, graph)
    ext.graph = ext.train_graph if ext.training else ext.eval_graph  # recompiled
    return ext


# Ops that write into their first argument: Python's augmented assignments, and setitem.
_AUGMENTED = {getattr(operator, f"i{op}") for op in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift",
    "rshift", "matmul")} | {operator.setitem}
# Ops whose result may share its first argument's memory (a write into it is a write into that).
_ALIASING = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "permute",
             "transpose", "t", "expand", "expand_as", "narrow", "select", "squeeze", "unsqueeze",
             "contiguous", "getitem", "chunk", "split", "unbind", "movedim", "moveaxis",
             "swapaxes", "as_strided", "detach", "unfold", "diagonal", "tensor_split", "to",
             "type_as", "float", "type", "real", "imag",
             # dropout in eval hands its input back as it got it
             "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
             "feature_alpha_dropout"}


def _op_name(target) -> str:
    return getattr(target, "__name__", str(target)).strip("_")


def _writes_first_argument(node, module: nn.Module) -> bool:
    """Whether an fx node may write into its first argument in place (``relu_``, ``+=``,
    ``nn.ReLU(inplace=True)``, ``F.relu(x, inplace=True)``)."""
    if node.kwargs.get("inplace") is True:
        return True
    if node.op == "call_module":
        return getattr(module.get_submodule(node.target), "inplace", False) is True
    if node.op in ("call_function", "call_method"):
        name = getattr(node.target, "__name__", str(node.target))
        return node.target in _AUGMENTED or (name.endswith("_") and not name.endswith("__"))
    return False


def _overwritten(node, module: nn.Module) -> bool:
    """Whether a later node writes in place into what ``node`` computed, or into a view of it."""
    seen, todo = set(), [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for user in n.users:
            if not user.args or user.args[0] is not n:
                continue
            if _writes_first_argument(user, module):
                return True
            if user.op in ("call_function", "call_method") and _op_name(user.target) in _ALIASING:
                todo.append(user)
            elif user.op == "call_module" and next(
                    module.get_submodule(user.target).parameters(), None) is None:
                # a leaf without weights may hand its input back (nn.Identity, nn.Dropout in
                # eval) or a view of it (nn.Flatten): `x = relu_(drop(block(x)))` overwrote the
                # block's point
                todo.append(user)
    return False


def _copy_what_is_overwritten(module: nn.Module, graph) -> None:
    """Return a copy of each point that a later node overwrites in place: the extractor returns
    the very tensor, which is read after the whole forward pass (resnet's ``bn1`` feeds
    ``ReLU(inplace=True)``: its scores were those of the ReLU's output)."""
    out = next(n for n in graph.nodes if n.op == "output")
    returned = dict(out.args[0])
    for key, node in returned.items():
        if _overwritten(node, module):
            with graph.inserting_after(node):
                returned[key] = graph.call_function(torch.clone, (node,))
    out.args = (returned,)
