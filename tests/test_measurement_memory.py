"""What a measurement holds at once and leaves behind: features freed as soon as they are scored,
one input size per state, nothing left open by an interrupted run, freed memory reused."""
import ctypes
import os
import subprocess
import sys
import weakref

import pytest
import torch
from torch import nn

import equifast as ef
from equifast.measurement import Measurer


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GELU()),
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.GELU()),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


@pytest.mark.parametrize("split_method", ["fx", "hooks"])
def test_a_pass_frees_the_previous_pass_features_before_making_its_own(split_method):
    # f(x) is kept for the whole batch; each transformed pass' features only until scored. The
    # previous pass' were still held while the next forward ran: a third copy of every point at
    # the peak (ResNet-50, 16 images at 224: 1072 MiB -> 810 MiB on the CPU)
    model = _net()
    alive, outputs = [], []

    def hook(module, args, out):  # on the first point's last layer: its output is the point
        alive.append(sum(r() is not None for r in outputs))
        outputs.append(weakref.ref(out))

    model[0][1].register_forward_hook(hook)
    x = torch.rand(4, 3, 12, 12)
    m = Measurer(model, x, ef.rotations(), batch_size=4, split_method=split_method)
    assert m.extract.method == split_method
    alive.clear(), outputs.clear()
    m.update(x)
    # passes: f(x), then one per rotation (4 images a pass); before each, only f(x)'s are alive
    assert alive == [0, 1, 1, 1]
    assert sum(r() is not None for r in outputs) == 0  # and none once the batch is done


def test_a_batch_of_another_size_is_refused_not_mixed_into_the_state():
    # every shift scales with the input, and the state kept one map shape per point: two input
    # sizes were averaged under one name, silently
    m = Measurer(_net(), torch.rand(2, 3, 16, 16), ef.diagonal_shifts(1, 2), batch_size=4)
    m.update(torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match=r"a batch of 16x16 images .* but got 24x24"):
        m.update(torch.rand(3, 3, 24, 24))
    assert m.state.n_images == 3 and m.state.shapes["0"] == (4, 16, 16)
    assert {s.n_images for s in m.state.scores.values()} == {3}


class _BrokenAt(torch.utils.data.Dataset):
    """Images, one of which cannot be read (a corrupt file, say)."""

    def __init__(self, n, broken):
        self.n, self.broken = n, broken

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.broken:
            raise OSError(f"image {i} is truncated")
        return torch.rand(3, 12, 12, generator=torch.Generator().manual_seed(i)), 0


def test_an_interrupted_run_leaves_no_bar_hook_mode_or_cache_that_changes_the_next():
    from tqdm.auto import tqdm

    model = _net().train()
    before = len(tqdm._instances) if hasattr(tqdm, "_instances") else 0
    with pytest.raises(OSError, match="image 9 is truncated") as caught:
        ef.measure(model, _BrokenAt(16, 9), transforms=ef.rotations(), batch_size=4,
                   progress=True, device="cpu")
    # the traceback (held here, as a notebook holds the last one) keeps measure's frame alive:
    # its progress bar stayed open, and the next run's was drawn a line below it
    assert caught.value is not None
    assert (len(tqdm._instances) if hasattr(tqdm, "_instances") else 0) == before
    assert torch.is_grad_enabled() and model.training and all(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert next(model.parameters()).is_contiguous()  # not left channels-last
    # the next run is the one an uninterrupted process gives
    fresh = ef.measure(_net(), _BrokenAt(8, -1), transforms=ef.rotations(), batch_size=4,
                       device="cpu")
    again = ef.measure(model, _BrokenAt(8, -1), transforms=ef.rotations(), batch_size=4,
                       device="cpu")
    cols = ["point", "transform", "channel", "layer", "undefined_fraction", "n_images"]
    assert again.points[cols].equals(fresh.points[cols])


def test_a_measurer_holds_its_index_maps_however_small_the_cache(monkeypatch):
    from equifast import functional

    monkeypatch.setattr(functional, "INDEX_MAP_CACHE_BYTES", 0)
    functional._map_cache.clear()
    try:
        transforms = ef.diagonal_shifts(1, 2) + ef.rotations()
        m = Measurer(_net(), torch.rand(2, 3, 12, 12), transforms, batch_size=4)
        m.update(torch.rand(2, 3, 12, 12))
        held = {id(a) for a, _ in m._index_maps}
        for t in transforms:  # the maps the operator reads are the Measurer's, not new ones
            assert id(functional._index_map(t, (12, 12), (12, 12), torch.device("cpu"))[0]) in held
        assert len(held) == len(transforms)  # one map per transform and map size, both points
    finally:
        functional._map_cache.clear()


def _alive_at_vector_updates(monkeypatch, model, module, x):
    """One ``update`` of an ``across_images`` Measurer (rotations): ``(measurer, outputs,
    alive)``, how many outputs ``module`` gave (f(x)'s and each pass') and, at each
    ``VectorState.update`` (the real one), how many of them were still alive."""
    from equifast.aggregate import VectorState

    outputs, alive = [], []
    module.register_forward_hook(lambda mod, args, out: outputs.append(weakref.ref(out)))
    update = VectorState.update

    def counted(self, fx, ftx):
        alive.append(sum(r() is not None for r in outputs))
        return update(self, fx, ftx)

    monkeypatch.setattr(VectorState, "update", counted)
    m = Measurer(model, x, ef.rotations(), batch_size=x.shape[0], vector_mode="across_images")
    outputs.clear()  # the split's pass
    m.update(x)
    return m, len(outputs), alive


def test_across_images_moments_are_summed_after_the_last_pass_features_are_freed(monkeypatch):
    # their K x K float64 products came while the last pass' maps were still held (ResNet-50,
    # 16 images at 224: a peak of 1073 MiB -> 810 MiB)
    model = _net()
    _, outputs, alive = _alive_at_vector_updates(monkeypatch, model, model[0][1],
                                                 torch.rand(4, 3, 12, 12))
    assert outputs == 4  # f(x) and three passes
    assert alive == [1] * 6  # f(x)'s alone, for each of 2 vector points and 3 rotations


def test_across_images_keeps_the_pooled_token_not_each_pass_token_sequence(monkeypatch):
    # a ViT's pool is its class token, x[:, 0], a view of the whole [N, L, C] sequence: kept
    # for the moments as it came, every pass' sequence lived until the batch was done
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=4, num_layers=2,
                                                 num_heads=2, hidden_dim=8, mlp_dim=16,
                                                 num_classes=3).eval()
    m, sequences, alive = _alive_at_vector_updates(monkeypatch, model, model.encoder.ln,
                                                   torch.rand(4, 3, 16, 16))
    assert [p.name for p in m.points][-2:] == ["pool", "final"]
    assert sequences == 4 and alive == [1] * 6  # f(x)'s alone, not those of 3 passes


def test_across_images_holds_a_float32_k_by_k_matrix_per_vector_point_and_transform():
    # a float64 K x K matrix per vector point and transform (ResNet-50's pool and logits under
    # the 35 default transforms: 1.4 GiB); the float32 correlations hold half, and the report
    # is the reference's on the whole set
    from equifast import reference as R

    torch.manual_seed(0)
    k = 40
    model = nn.Sequential(nn.Conv2d(3, k, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(k, k)).eval()
    x = torch.rand(12, 3, 8, 8)
    ts = ef.rotations()
    m = Measurer(model, x[:2], ts, batch_size=4, vector_mode="across_images", points=["0"],
                 channels_last=False)
    for i in range(0, 12, 4):
        m.update(x[i:i + 4])
    vectors = m.state.vectors
    assert len(vectors) == 2 * len(ts)  # pool and final, each transform
    for st in vectors.values():
        held = sum(t.numel() * t.element_size() for t in vars(st).values()
                   if isinstance(t, torch.Tensor))
        assert held <= 4 * k * k + 6 * 8 * k
    P = m.state.report().points.set_index(["point", "transform"])
    with torch.no_grad():
        for t in ts:
            for name, f in (("pool", model[:3]), ("final", model)):
                want = R.equivariance_scores(f(x), f(t(x)), vector_mode="across_images")
                row = P.loc[(name, t.name)]
                assert abs(row.channel - want.channel[0].double().mean().item()) < 1e-6
                assert abs(row.layer - want.layer[0].double().mean().item()) < 1e-6


_FAULTS = """
import resource, torch, torchvision, equifast as ef
from equifast.cpu_memory import keep_freed_memory
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=10)
x = torch.randn(16, 3, 112, 112)
def run():
    ef.measure(m, x, transforms="translation:1-4", batch_size=16, device="cpu")
run()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
run()
run()
print(keep_freed_memory(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"),
                    reason="glibc's malloc only")
def test_cpu_measurements_reuse_freed_memory_rather_than_fault_it_in_again():
    # Each pass' freed features went back to the system and were faulted in again by the next
    # pass (ResNet-18, 32 images at 112x112: about 350,000 minor faults and 0.7 s of system time
    # a call, where its plain forward passes fault none). Counted in fresh processes, after a
    # first call: with glibc's thresholds set by the measurement, and with EQUIFAST_MALLOC=default.
    def faults(**env):
        run = subprocess.run([sys.executable, "-c", _FAULTS], env={**os.environ, **env},
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-2000:]
        kept, count = run.stdout.split()
        return kept, int(count)

    kept, reused = faults()
    default, faulted = faults(EQUIFAST_MALLOC="default")
    assert (kept, default) == ("True", "False")
    assert faulted > 20_000 and reused < faulted / 4, (reused, faulted)
