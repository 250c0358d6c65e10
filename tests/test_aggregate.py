"""Streaming sums: exact merges, batch-independence, undefined fractions."""
import math

import pytest
import torch

from equifast import functional as F
from equifast import reference as R
from equifast.aggregate import ActivationState, ScoreState, VectorState, flat_in_memory_order
from equifast.reference import Scores


def _scores(n=7, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, k, generator=g)
    l = torch.maximum(c, torch.rand(n, k, generator=g))
    c[0, 1] = float("nan")
    l[0, 1] = float("nan")
    idx = torch.randint(0, k, (n, k), generator=g)
    idx[0, 1] = -1
    return Scores(c, l, idx)


def test_mean_over_defined_and_undefined_fraction():
    s = _scores()
    out = ScoreState().update(s).compute()
    assert math.isclose(out["channel"], float(s.channel.double().nanmean()), rel_tol=1e-9)
    assert math.isclose(out["layer"], float(s.layer.double().nanmean()), rel_tol=1e-9)
    assert math.isclose(out["undefined_fraction"], 1 / 35)
    assert out["n_images"] == 7
    assert out["layer"] >= out["channel"]


def test_merge_is_exact_whatever_the_split():
    s = _scores(n=40)
    whole = ScoreState().update(s)
    parts = [ScoreState().update(Scores(*(t[i:i + 7] for t in s))) for i in range(0, 40, 7)]
    merged = ScoreState()
    for p in reversed(parts):
        merged.merge(p)
    assert merged == whole  # integers: bit-identical


def test_offdiagonal_fraction_counts_argmax_elsewhere():
    c = torch.ones(1, 3)
    s = Scores(c, c, torch.tensor([[0, 2, 1]]))
    assert math.isclose(ScoreState().update(s).compute()["offdiagonal_fraction"], 2 / 3)


def test_vector_state_streams_to_the_reference_across_images():
    g = torch.Generator().manual_seed(1)
    fx, ftx = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g)
    ftx[:, 0] = 3 * fx[:, 2] + 1
    for metric in ("correlation", "cosine"):
        st = VectorState()
        for i in range(0, 50, 8):
            st.update(fx[i:i + 8], ftx[i:i + 8])
        other = VectorState().update(fx, ftx)
        want = R.equivariance_scores(fx, ftx, metric=metric, vector_mode="across_images")
        got = st.scores(metric)
        torch.testing.assert_close(got.channel[0], want.channel[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(got.layer[0], want.layer[0], atol=1e-6, rtol=0)
        assert torch.equal(got.layer_index[0], want.layer_index[0])
        torch.testing.assert_close(st.corr, other.corr)
    assert VectorState().update(fx, ftx).scores().layer_index[0, 2] == 0
    # as the reference: one image has no correlation across images (streamed one at a time)
    with pytest.raises(ValueError, match="at least two images"):
        R.equivariance_scores(fx[:1], ftx[:1], vector_mode="across_images")
    with pytest.raises(ValueError, match="at least two images .* got 1"):
        VectorState().update(fx[:1], ftx[:1]).scores()
    two = VectorState().update(fx[:1], ftx[:1]).update(fx[1:2], ftx[1:2]).scores()
    want = R.equivariance_scores(fx[:2], ftx[:2], vector_mode="across_images")
    torch.testing.assert_close(two.channel[0], want.channel[0], atol=1e-6, rtol=0, equal_nan=True)


def test_vector_state_keeps_the_spread_of_vectors_with_a_large_mean():
    # logits near 1000 that differ by about 1e-2 (spread / mean 2e-5, inside the tolerance),
    # streamed one image at a time: raw sums of squares lost 6e-5 of the score, and more with
    # more images
    g = torch.Generator().manual_seed(0)
    r = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    fx, ftx = 1000 + 0.012 * r, 1000 + 0.012 * (r.flip(1) + 0.7 * r)
    want = R.equivariance_scores(fx, ftx, vector_mode="across_images")  # two passes, float64
    one_by_one, halves = VectorState(), VectorState()
    for i in range(len(fx)):
        one_by_one.update(fx[i:i + 1], ftx[i:i + 1])
    halves.update(fx[:7000], ftx[:7000]).merge(VectorState().update(fx[7000:], ftx[7000:]))
    for st in (one_by_one, halves):
        torch.testing.assert_close(st.scores().channel[0].double(), want.channel[0].double(),
                                   atol=1e-7, rtol=0)
    with pytest.raises(ValueError, match="`metric` to be one of"):
        one_by_one.scores("pearson")
    with pytest.raises(ValueError, match="same eps"):
        VectorState(eps=1e-5).merge(VectorState(eps=0.5).update(fx[:2], ftx[:2]))


def _state_bytes(st: VectorState) -> int:
    return sum(t.numel() * t.element_size() for t in vars(st).values()
               if isinstance(t, torch.Tensor))


def test_vector_state_holds_its_k_by_k_matrix_in_float32_and_matches_the_reference():
    # a float64 K x K matrix per vector point and transform: 1.4 GiB for ResNet-50's pool and
    # logits under 35 transforms; float32 correlations halve it, within float32 rounding
    g = torch.Generator().manual_seed(4)
    n, k = 96, 300
    fx = torch.randn(n, k, generator=g)
    ftx = 0.5 * fx[:, torch.randperm(k, generator=g)] + torch.randn(n, k, generator=g)
    st = VectorState()
    for i in range(0, n, 16):
        st.update(fx[i:i + 16], ftx[i:i + 16])
    assert _state_bytes(st) <= 4 * k * k + 6 * 8 * k  # corr, and six float64 K-vectors at most
    for metric in ("correlation", "cosine"):
        want = R.equivariance_scores(fx, ftx, metric=metric, vector_mode="across_images")
        got = st.scores(metric)
        torch.testing.assert_close(got.channel, want.channel[:1], atol=1e-12, rtol=0)  # float64
        torch.testing.assert_close(got.layer, want.layer[:1], atol=1e-6, rtol=0)
        assert torch.equal(got.layer_index, want.layer_index[:1])
    # equal channels tie exactly, as in the reference: the smallest k' (the float64 diagonal
    # beside float32 entries broke 223 of 400 such ties at random); l >= c still
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        fx = torch.randn(50, 4, generator=g)
        ftx = fx[:, [1, 1, 0, 0]]
        st = VectorState().update(fx[:20], ftx[:20]).update(fx[20:], ftx[20:])
        for metric in ("correlation", "cosine"):
            want = R.equivariance_scores(fx, ftx, metric=metric, vector_mode="across_images")
            got = st.scores(metric)
            assert torch.equal(got.layer_index, want.layer_index[:1]), (seed, metric)
            torch.testing.assert_close(got.layer, want.layer[:1], atol=1e-6, rtol=0)
            assert (got.layer >= got.channel).all()


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_vector_state_scores_do_not_depend_on_the_activations_scale(scale):
    # the measure is scale-invariant; squares of 1e30 overflow float32 and of 1e-30 underflow it,
    # so the float32 matrix must hold what does neither (correlations)
    g = torch.Generator().manual_seed(5)
    fx, ftx = torch.randn(40, 6, generator=g), torch.randn(40, 6, generator=g)
    ftx[:, 1] = fx[:, 3]
    plain, scaled = VectorState(), VectorState()
    for i in range(0, 40, 8):
        plain.update(fx[i:i + 8], ftx[i:i + 8])
        scaled.update(scale * fx[i:i + 8], scale * ftx[i:i + 8])
    for metric in ("correlation", "cosine"):
        want, got = plain.scores(metric), scaled.scores(metric)
        torch.testing.assert_close(got.channel, want.channel, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.layer, want.layer, atol=1e-6, rtol=0)
        assert torch.equal(got.layer_index, want.layer_index)
        assert got.layer_index[0, 3] == 1 and got.layer[0, 3] > 0.999999


def test_vector_state_kept_with_a_float64_matrix_reads_back(tmp_path):
    # a sweep's shard kept before the float32 correlations holds C as float64 ``cuv``
    g = torch.Generator().manual_seed(6)
    fx, ftx = torch.randn(30, 5, generator=g), torch.randn(30, 5, generator=g)
    new = VectorState().update(fx[:10], ftx[:10]).update(fx[10:], ftx[10:])
    u, v = fx.double() - fx.double().mean(0), ftx.double() - ftx.double().mean(0)
    old = {"eps": R.TOLERANCE, "n": 30, "mu": fx.double().mean(0), "mv": ftx.double().mean(0),
           "cuu": (u * u).sum(0), "cvv": (v * v).sum(0), "cuv": u.T @ v}
    for state in (old, vars(new)):
        path = tmp_path / "state.pt"
        st = VectorState.__new__(VectorState)
        st.__dict__.update(state)
        torch.save(st, path)
        with torch.serialization.safe_globals([VectorState]):
            back = torch.load(path, weights_only=True)
        assert not hasattr(back, "cuv")
        for metric in ("correlation", "cosine"):
            want = R.equivariance_scores(fx, ftx, metric=metric, vector_mode="across_images")
            got = back.scores(metric)
            torch.testing.assert_close(got.channel, want.channel[:1], atol=1e-12, rtol=0)
            torch.testing.assert_close(got.layer, want.layer[:1], atol=1e-6, rtol=0)
        back.merge(VectorState().update(fx[:3], ftx[:3]))  # merges as a new one
        assert back.n == 33


def test_activation_state():
    f = torch.randn(4, 3, 5, 5)
    # images are summed in float32 (relative error ~1e-7 of the magnitudes), then in float64
    tol = 1e-6 * float(f.double().abs().sum())
    first, second = ActivationState(), ActivationState()
    first.update(f[:2])
    assert math.isclose(first.total, float(f[:2].double().sum()), rel_tol=0, abs_tol=tol)
    second.update(f[2:])
    a = first.merge(second).compute()
    assert a["mean_activation"] == pytest.approx(float(f.double().mean()), rel=0, abs=tol / f.numel())
    assert a["mean_magnitude"] == pytest.approx(float(f.double().abs().mean()), rel=1e-6)


def test_activation_sums_past_float32_are_float64():
    # 1000 values of 1e37 an image: its float32 sum (1e40) was infinite
    f = torch.full((2, 10, 10, 10), 1e37)
    f[1] = -3e37
    out = ActivationState().update(f).compute()
    assert math.isclose(out["mean_activation"], -1e37, rel_tol=1e-6)
    assert math.isclose(out["mean_magnitude"], 2e37, rel_tol=1e-6)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced", "half", "double", "vector",
                                    "scalar", "empty", "large"])
def test_activation_sums_in_any_layout(layout):
    g = torch.Generator().manual_seed(3)
    f = torch.randn(6, 8, 7, 9, generator=g) + 0.5  # a mean away from 0, so relative errors show
    f = {"nchw": f, "channels_last": f.contiguous(memory_format=torch.channels_last),
         "sliced": f[1:5, ::2, :, 2:],  # not dense: copied
         "half": f.half().contiguous(memory_format=torch.channels_last),
         "double": f.double().contiguous(memory_format=torch.channels_last),
         "vector": f[:, :, 0, 0], "scalar": f[0, 0, 0, 0], "empty": f[:0],
         # one image of 64 x 300 x 300: values added one by one in float32 drift 6e-4
         "large": torch.randn(1, 64, 300, 300, generator=g) + 0.5}[layout]
    want = torch.tensor([f.double().sum(), f.double().abs().sum()], dtype=torch.float64)
    got = ActivationState.batch_sums(f)
    assert got.dtype == torch.float64 and got.shape == (2,)
    torch.testing.assert_close(got, want, rtol=1e-14 if layout == "double" else 1e-6, atol=0)
    if layout != "large":
        assert flat_in_memory_order(f).tolist() == sorted_by_address(f)


def sorted_by_address(t):
    """``t``'s values ordered by their offsets in memory (the meaning of memory order)."""
    if t.dim() == 0:
        return [t.item()]
    idx = torch.stack(torch.meshgrid(*[torch.arange(s) for s in t.shape], indexing="ij"), -1)
    offsets = (idx.reshape(-1, t.dim()) * torch.tensor(t.stride())).sum(-1)
    return t.reshape(-1)[offsets.argsort(stable=True)].tolist()


def test_batch_sums_do_not_wrap_past_two_to_the_23_entries():
    # one int64 sum of 2**40-scaled scores would wrap at 2**23 entries of 1.0
    n, k = 4200, 2048
    ones = torch.ones(n, k)
    st = ScoreState().update(Scores(ones, ones * 0.5, torch.zeros(n, k, dtype=torch.int64)))
    got = st.compute()
    assert got["channel"] == 1.0 and got["layer"] == 0.5


def test_batch_sums_of_many_batches_equal_each_alone():
    # one set of kernels for batches of different shapes; each row is that batch's own sums
    g = torch.Generator().manual_seed(0)
    batches = []
    for n, k in ((3, 5), (2, 1), (4, 7)):
        channel = torch.rand(n, k, generator=g)
        channel[0, 0] = float("nan")
        layer = torch.maximum(channel, torch.rand(n, k, generator=g))
        index = torch.randint(-1, k, (n, k), generator=g)
        batches.append(Scores(channel, layer, index))
    together = ScoreState.batch_sums(batches).tolist()
    for b, row in zip(batches, together):
        one = ScoreState().add(row, *b.channel.shape)
        want_c = sum(round(v * 2 ** 40) for v in b.channel.flatten().tolist() if v == v)
        assert one.channel_sum == want_c and one.channel_defined == b.channel.numel() - 1
        own = torch.arange(b.channel.shape[1])
        assert one.offdiagonal == int(((b.layer_index >= 0) & (b.layer_index != own)).sum())
        assert row == ScoreState.batch_sums([b])[0].tolist()


def test_channel_and_layer_undefined_entries_are_counted_apart():
    # the layer max skips undefined targets, so a NaN channel score can have a defined layer score
    nan = float("nan")
    s = Scores(torch.tensor([[nan, 0.5], [0.2, nan]]), torch.tensor([[0.7, 0.6], [0.3, nan]]),
               torch.tensor([[1, 1], [0, -1]]))
    out = ScoreState().update(s).compute()
    defined_c, defined_l = (~torch.isnan(s.channel)).sum().item(), (~torch.isnan(s.layer)).sum().item()
    assert math.isclose(out["undefined_fraction"], 1 - defined_c / 4)
    assert math.isclose(out["layer_undefined_fraction"], 1 - defined_l / 4)
    assert math.isclose(out["layer"], float(s.layer.double().nanmean()), rel_tol=1e-9)
    off = ((s.layer_index >= 0) & (s.layer_index != torch.arange(2))).sum().item()
    assert math.isclose(out["offdiagonal_fraction"], off / defined_l)  # over defined layer entries


def test_vector_state_undefined_channels_match_the_reference():
    # dead and constant channels on one side only (an asymmetric mask), tiny activations (the
    # tolerance is relative), eps = 1 with cosine (undefined exactly at the tolerance), and a
    # merge with an empty state
    g = torch.Generator().manual_seed(3)
    fx, ftx = torch.randn(12, 4, generator=g), torch.randn(12, 4, generator=g)
    fx[:, 1] = 0.0
    ftx[:, 2] = 3.0
    for metric, eps, scale in (("correlation", R.TOLERANCE, 1.0), ("cosine", R.TOLERANCE, 1e-9),
                               ("correlation", R.TOLERANCE, 1e-9), ("cosine", 1.0, 1.0)):
        a, b = scale * fx, scale * ftx
        st = VectorState(eps).update(a[:5], b[:5]).merge(VectorState(eps))
        st.merge(VectorState(eps).update(a[5:], b[5:]))
        want = R.equivariance_scores(a, b, metric=metric, vector_mode="across_images", eps=eps)
        got = st.scores(metric)
        torch.testing.assert_close(got.channel[0], want.channel[0], atol=1e-6, rtol=0, equal_nan=True)
        torch.testing.assert_close(got.layer[0], want.layer[0], atol=1e-6, rtol=0, equal_nan=True)
        assert torch.equal(got.layer_index[0], want.layer_index[0]), (metric, eps, scale)
    assert torch.isnan(want.channel).all()  # the last case: nothing is defined


def test_float64_vectors_are_scored_in_float64():
    # the vector path is the float64 reference: rounding them to float32 first (an ulp of 1e-3
    # at 1e4) moved these scores by up to 7e-5
    g = torch.Generator().manual_seed(0)
    fx = 1e4 + 0.5 * torch.randn(64, 5, generator=g, dtype=torch.float64)
    ftx = fx + 0.25 * torch.randn(64, 5, generator=g, dtype=torch.float64)
    want = R.equivariance_scores(fx, ftx, vector_mode="across_images")
    got = F.equivariance_scores(fx, ftx, vector_mode="across_images")
    torch.testing.assert_close(got.channel, want.channel, atol=1e-12, rtol=0)
