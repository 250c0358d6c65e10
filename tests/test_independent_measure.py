"""An independent oracle for ``equifast.measure``, written from SPEC.md and the README only.

Nothing of equifast's transforms, reference, functional, aggregate or report code is used
here: the input transforms, the maps' counterparts ``T_l``, the similarities, the undefined
rule, the scores and every mean are plain NumPy float64 over features taken with forward
hooks placed by this file. ``equifast.split`` is used only to learn which modules are the
points (and whether a point is a module's input or output); their layout (token grids,
prefix tokens) is derived here from the model itself.
"""
from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import equifast as ef

EPS = 1e-5  # SPEC/README: undefined when ||v|| <= 1e-5 ||u|| (v: u centred for correlation)
TIE = 1e-5  # raw similarities closer than this to the row's maximum: an arg-max by rounding


# --------------------------------------------------------------------------------------
# Transforms, from SPEC section 2. A transform is a plain tuple here:
#   ("rot", q) | ("flip", "horizontal"|"vertical") | ("shift", dy, dx, mode, rounding)
# --------------------------------------------------------------------------------------

def family(t) -> str:
    if t[0] == "rot":
        return "rotation"
    if t[0] == "flip":
        return "flip"
    _, _, _, mode, rounding = t
    name = "translation"
    if mode == "zero":
        name += "-zero"
    if rounding == "nearest":
        name += "-nearest"
    return name


def to_equifast(t):
    if t[0] == "rot":
        return ef.Rotation(quarter_turns=t[1])
    if t[0] == "flip":
        return ef.Flip(t[1])
    _, dy, dx, mode, rounding = t
    return ef.Translation(dy, dx, mode=mode, rounding=rounding)


def scaled(shift: int, size_l: int, size: int, rounding: str) -> int:
    """``shift * size_l / size``, exactly, rounded toward zero or to nearest (halves away)."""
    s = Fraction(shift * size_l, size)
    if rounding == "down":
        return int(s)  # int() truncates toward zero
    sign = -1 if s < 0 else 1
    return sign * math.floor(abs(s) + Fraction(1, 2))


def move_zero(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moves by (dy, dx) on the last two dims; vacated positions are 0."""
    H, W = a.shape[-2:]
    out = np.zeros_like(a)
    ys, yd = (slice(0, H - dy), slice(dy, H)) if dy >= 0 else (slice(-dy, H), slice(0, H + dy))
    xs, xd = (slice(0, W - dx), slice(dx, W)) if dx >= 0 else (slice(-dx, W), slice(0, W + dx))
    out[..., yd, xd] = a[..., ys, xs]
    return out


def transform_input(t, x: np.ndarray) -> np.ndarray:
    if t[0] == "rot":
        return np.rot90(x, t[1], axes=(-2, -1))  # == torch.rot90(x, q, dims=(-2, -1))
    if t[0] == "flip":
        return np.flip(x, -1 if t[1] == "horizontal" else -2)
    _, dy, dx, mode, _ = t
    if mode == "circular":
        return np.roll(x, (dy, dx), axis=(-2, -1))
    return move_zero(x, dy, dx)


def compared_pairs(t, fx: np.ndarray, ftx: np.ndarray, input_hw):
    """(T_l(f(x)), f(T(x))) over the compared positions, each ``[N, K, P]``."""
    N, K, h, w = fx.shape
    if t[0] == "rot":
        assert h == w
        u = np.rot90(fx, t[1], axes=(-2, -1))
        v = ftx
    elif t[0] == "flip":
        u = np.flip(fx, -1 if t[1] == "horizontal" else -2)
        v = ftx
    else:
        _, dy, dx, mode, rounding = t
        sy = scaled(dy, h, input_hw[0], rounding)
        sx = scaled(dx, w, input_hw[1], rounding)
        if mode == "circular":
            u, v = np.roll(fx, (sy, sx), axis=(-2, -1)), ftx
        else:
            # positions (i, j) with both (i, j) and (i - sy, j - sx) on the map
            i0, i1 = max(0, sy), min(h, h + sy)
            j0, j1 = max(0, sx), min(w, w + sx)
            assert i1 > i0 and j1 > j0, "no overlap is an error, not NaN"
            u = fx[..., i0 - sy:i1 - sy, j0 - sx:j1 - sx]
            v = ftx[..., i0:i1, j0:j1]
    return (np.ascontiguousarray(u).reshape(N, K, -1),
            np.ascontiguousarray(v).reshape(N, K, -1))


# --------------------------------------------------------------------------------------
# Similarities and scores, from SPEC section 1.
# --------------------------------------------------------------------------------------

def unit_rows(a: np.ndarray, metric: str):
    """Rows of ``a`` ([..., R, P]) normalised for the metric, and which are defined."""
    a = a.astype(np.float64)
    raw = np.linalg.norm(a, axis=-1)
    c = a - a.mean(-1, keepdims=True) if metric == "correlation" else a
    norm = np.linalg.norm(c, axis=-1)
    ok = (norm > EPS * raw) & np.isfinite(norm)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = np.where(ok[..., None], c / np.where(ok, norm, 1.0)[..., None], 0.0)
    return unit, ok


def score_matrix(u: np.ndarray, v: np.ndarray, metric: str):
    """channel, layer, argmax and ambiguous, each [.., K], for rows u, v of [.., K, P].

    ``ambiguous``: another defined target lies within ``TIE`` of the maximum, so which
    ``k'`` is the arg-max depends on rounding (README: ties are as computed).
    """
    uu, uok = unit_rows(u, metric)
    vv, vok = unit_rows(v, metric)
    S = uu @ np.ascontiguousarray(np.swapaxes(vv, -1, -2))  # [.., K, K] raw similarities
    diag = np.diagonal(S, axis1=-2, axis2=-1)
    channel = np.where(uok & vok, np.maximum(0.0, diag), np.nan)
    masked = np.where(vok[..., None, :], S, -np.inf)
    best = masked.max(-1)
    arg = np.argmax(masked, axis=-1)                      # first (smallest k') of the max
    defined = uok & vok.any(-1, keepdims=True)
    layer = np.where(defined, np.maximum(0.0, best), np.nan)
    arg = np.where(defined, arg, -1)
    ambiguous = defined & ((masked >= best[..., None] - TIE).sum(-1) > 1)
    return channel, layer, arg, ambiguous


def point_scores(fx, ftx, t, metric, vector_mode, input_hw):
    """[N', K] channel, layer, argmax, ambiguous for one point (N' = N, or 1 across images)."""
    is_vector = fx.ndim == 2 or (fx.shape[-1] == 1 and fx.shape[-2] == 1)
    if not is_vector:
        u, v = compared_pairs(t, fx, ftx, input_hw)
        return score_matrix(u, v, metric)
    fx = fx.reshape(fx.shape[0], -1)
    ftx = ftx.reshape(ftx.shape[0], -1)
    N, K = fx.shape
    if vector_mode == "per_image":                        # T_l = identity; one score per image
        c, l, _, _ = score_matrix(fx[:, None, :], ftx[:, None, :], metric)   # [N, 1]
        arg = np.where(np.isnan(l), -1, np.arange(K)[None, :])              # arg-max: k itself
        return np.repeat(c, K, 1), np.repeat(l, K, 1), arg, np.zeros((N, K), bool)
    assert N >= 2
    return score_matrix(fx.T[None], ftx.T[None], metric)                    # rows: channels


def point_row(c, l, a, ambiguous):
    nan_c, nan_l = np.isnan(c), np.isnan(l)
    k = np.arange(c.shape[-1])[None, :]
    off = (a != k)[~nan_l]
    n_layer = max(1, int((~nan_l).sum()))
    return {
        "channel": np.nan if nan_c.all() else float(np.nanmean(c)),
        "layer": np.nan if nan_l.all() else float(np.nanmean(l)),
        "undefined_fraction": float(nan_c.mean()),
        "layer_undefined_fraction": float(nan_l.mean()),
        "offdiagonal_fraction": np.nan if nan_l.all() else float(off.mean()),
        "offdiagonal_slack": float(ambiguous.sum()) / n_layer,
    }


# --------------------------------------------------------------------------------------
# Features with our own hooks.
# --------------------------------------------------------------------------------------

def token_grid(model, input_hw):
    """Patch grid and prefix tokens of a timm ViT, from the model's own attributes."""
    ph, pw = model.patch_embed.patch_size
    return (input_hw[0] // ph, input_hw[1] // pw), int(getattr(model, "num_prefix_tokens", 0))


def as_map(t: torch.Tensor, model, input_hw) -> np.ndarray:
    a = t.detach().double().cpu().numpy()
    if a.ndim == 3:                                       # tokens [N, L, C] -> [N, C, h, w]
        (gh, gw), prefix = token_grid(model, input_hw)
        L = a.shape[1]
        assert L in (gh * gw, gh * gw + prefix)
        a = a[:, L - gh * gw:, :]
        a = a.transpose(0, 2, 1).reshape(a.shape[0], a.shape[2], gh, gw)
    return a


def features(model, x: torch.Tensor, where):
    """{point: float64 array} for ``where`` = [(point, module name, 'input'|'output')]."""
    got, handles = {}, []
    for point, module, take in where:
        if module == "":
            continue
        def hook(mod, inp, out, point=point, take=take):
            got[point] = inp[0] if take == "input" else out
        handles.append(model.get_submodule(module).register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    for point, module, take in where:
        if module == "":
            got[point] = out
    hw = tuple(x.shape[-2:])
    return {p: as_map(got[p], model, hw) for p, _, _ in where}


# --------------------------------------------------------------------------------------
# The whole measurement.
# --------------------------------------------------------------------------------------

PARTS = ("early", "middle", "late", "pool", "final")


def oracle_features(model, images: torch.Tensor, transforms, where):
    """f(x) and f(T(x)) for every transform, in one forward pass (float64 arrays)."""
    model.eval()
    x = images.double().numpy()
    batch = [images] + [torch.from_numpy(np.ascontiguousarray(transform_input(t, x)))
                        .to(images.dtype) for t in transforms]
    f = features(model, torch.cat(batch), where)
    N = x.shape[0]
    split = [{p: a[i * N:(i + 1) * N] for p, a in f.items()} for i in range(len(batch))]
    return split[0], split[1:]


def oracle_measure(feats, transforms, metrics, vector_mode, where, parts, input_hw):
    """Rows of points and parts as dicts, everything in float64.

    ``feats``: ``oracle_features``'s; ``where``: [(point, module, take)] in order;
    ``parts``: {point: part}. A part's ``undefined_fraction`` is read as its scores are
    averaged (SPEC is silent; README: it "counts" an all-undefined point's entries): the mean
    over its points of each point's mean over the family's transforms.
    """
    f, fts = feats
    points = []
    for t, ft in zip(transforms, fts):
        for p, _, _ in where:
            for metric in metrics:
                c, l, a, amb = point_scores(f[p], ft[p], t, metric, vector_mode, input_hw)
                row = {"point": p, "part": parts[p], "transform": t, "family": family(t),
                       "metric": metric, "n_images": f[p].shape[0]}
                row.update(point_row(c, l, a, amb))
                points.append(row)
    out_parts = []
    fams = list(dict.fromkeys(family(t) for t in transforms))
    for metric in metrics:
        for fam in fams:
            for part in PARTS:
                names = [p for p, _, _ in where if parts[p] == part]
                if not names:
                    continue
                per_point = {"channel": [], "layer": [], "undefined_fraction": []}
                for p in names:
                    rows = [r for r in points
                            if r["point"] == p and r["family"] == fam and r["metric"] == metric]
                    for key, means in per_point.items():  # step 2: family mean per point
                        vals = [r[key] for r in rows if not np.isnan(r[key])]
                        means.append(np.mean(vals) if vals else np.nan)
                row = {"part": part, "family": fam, "metric": metric, "n_points": len(names)}
                for key, vals in per_point.items():      # step 3: part mean over points
                    vals = [v for v in vals if not np.isnan(v)]
                    row[key] = float(np.mean(vals)) if vals else np.nan
                out_parts.append(row)
    return points, out_parts


# --------------------------------------------------------------------------------------
# Comparison with equifast.measure.
# --------------------------------------------------------------------------------------

SCORE_ATOL = 1e-5   # float32 features and operator against float64 here


def oracle_and_report(model, images, transforms, metrics, vector_modes, points=None,
                      batch_size=64, **kw):
    """The oracle's rows and equifast's report for each vector mode."""
    model.eval()
    split = ef.split(model, images[:2], points=points)
    where = [(p.name, p.module, p.take) for p in split]
    parts = {p.name: p.part for p in split}
    feats = oracle_features(model, images, transforms, where)
    out = {}
    for vm in vector_modes:
        mine = oracle_measure(feats, transforms, metrics, vm, where, parts,
                              tuple(images.shape[-2:]))
        for r in mine[0]:
            a = feats[0][r["point"]]
            r["mean_activation"], r["mean_magnitude"] = a.mean(), np.abs(a).mean()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # single-position maps warn; that is expected
            report = ef.measure(model, images, transforms=[to_equifast(t) for t in transforms],
                                metric=list(metrics), vector_mode=vm, batch_size=batch_size,
                                device="cpu", points=points, **kw)
        out[vm] = (mine, report)
    return out


def same(a, b, atol):
    a, b = float(a), float(b)
    if np.isnan(a) or np.isnan(b):
        return np.isnan(a) and np.isnan(b)
    return abs(a - b) <= atol


def assert_agrees(mine, report):
    """Every point row and part row of the report against the oracle; the max differences."""
    mine_points, mine_parts = mine
    P, Q = report.points, report.parts
    assert len(P) == len(mine_points) and len(Q) == len(mine_parts)
    worst = {"score": 0.0, "offdiagonal": 0.0, "part": 0.0}
    for r in mine_points:
        name = str(to_equifast(r["transform"]))
        q = P[(P["point"] == r["point"]) & (P["transform"] == name) & (P["metric"] == r["metric"])]
        assert len(q) == 1, (r["point"], name, r["metric"])
        q = q.iloc[0]
        where = (r["point"], name, r["metric"])
        assert q["part"] == r["part"] and q["family"] == r["family"], where
        assert int(q["n_images"]) == r["n_images"], where
        for key in ("channel", "layer"):
            assert same(q[key], r[key], SCORE_ATOL), (where, key, float(q[key]), r[key])
            if not np.isnan(r[key]):
                worst["score"] = max(worst["score"], abs(float(q[key]) - r[key]))
        for key in ("undefined_fraction", "layer_undefined_fraction"):
            assert same(q[key], r[key], 1e-12), (where, key, float(q[key]), r[key])
        # the arg-max is free among ties (README): allow the share of near-tied maxima
        off, slack = r["offdiagonal_fraction"], r["offdiagonal_slack"]
        assert same(q["offdiagonal_fraction"], off, slack + 1e-12), (
            where, float(q["offdiagonal_fraction"]), off, slack)
        if not np.isnan(off):
            worst["offdiagonal"] = max(worst["offdiagonal"], abs(q["offdiagonal_fraction"] - off))
        assert same(q["mean_magnitude"], r["mean_magnitude"], 1e-6 * r["mean_magnitude"] + 1e-30)
        assert same(q["mean_activation"], r["mean_activation"], 1e-6 * r["mean_magnitude"] + 1e-30)
    for r in mine_parts:
        q = Q[(Q["part"] == r["part"]) & (Q["family"] == r["family"])
              & (Q["metric"] == r["metric"])]
        assert len(q) == 1, (r["part"], r["family"], r["metric"])
        q = q.iloc[0]
        where = (r["part"], r["family"], r["metric"])
        assert int(q["n_points"]) == r["n_points"], where
        for key in ("channel", "layer"):
            assert same(q[key], r[key], SCORE_ATOL), (where, key, float(q[key]), r[key])
            if not np.isnan(r[key]):
                worst["part"] = max(worst["part"], abs(float(q[key]) - r[key]))
        assert same(q["undefined_fraction"], r["undefined_fraction"], 1e-12), where
    return worst


def shift(dy, dx, mode="circular", rounding="down"):
    return ("shift", dy, dx, mode, rounding)


# --------------------------------------------------------------------------------------
# Real models.
# --------------------------------------------------------------------------------------

def test_resnet18_agrees_with_the_oracle():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    images = ef.data.embedded_photos(3, 48, seed=1)
    images = (images - 0.45) / 0.25
    # 48 px: maps 12, 12, 6, 3, 2 (scales 1/4, 1/8, 1/16, 1/24)
    transforms = [
        shift(2, 2), shift(8, 8),                         # 0 and 2 on the 12-map; 0 below
        shift(6, 6, "zero"), shift(9, -5, "zero", "nearest"),
        shift(2, 2, rounding="nearest"),                  # 0.5 -> 1 on the 12-map
        shift(-6, -2, rounding="nearest"),                # -1.5 -> -2, -0.5 -> -1
        shift(-7, 3),                                     # -1.75 -> -1 (toward zero)
        ("rot", 1), ("rot", 3), ("flip", "vertical"),
    ]
    runs = oracle_and_report(model, images, transforms, ("correlation", "cosine"),
                             ("per_image",), batch_size=16)
    # across images only the vectors (pool, final) change: fewer transforms, batches of 2 so
    # that the streaming sums over images span several batches
    runs.update(oracle_and_report(model, images, transforms[1:3] + transforms[7:8],
                                  ("correlation", "cosine"), ("across_images",), batch_size=2))
    for vm, (mine, report) in runs.items():
        assert report.meta["vector_mode"] == vm
        worst = assert_agrees(mine, report)
        assert worst["score"] < SCORE_ATOL
    # the 2x2 maps of layer4 are compared whole, and something is undefined (dead channels)
    P = runs["per_image"][1].points
    assert (P["undefined_fraction"] > 0).any()
    assert P["family"].nunique() == 6


def test_timm_vit_tokens_agree_with_the_oracle():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                              img_size=64)
    images = (ef.data.embedded_photos(3, 64, seed=2) - 0.5) / 0.25
    # a 4x4 patch grid: shifts of 16 px move it by one token
    transforms = [shift(16, 16), shift(8, 8, rounding="nearest"), shift(16, -32, "zero"),
                  ("rot", 1), ("flip", "horizontal")]
    runs = oracle_and_report(model, images, transforms, ("correlation", "cosine"), ("per_image",))
    assert_agrees(*runs["per_image"])
    P = runs["per_image"][1].points
    assert set(P["point"]) >= {"stem", "blocks.0", "blocks.11", "pool", "final"}


# --------------------------------------------------------------------------------------
# Hand-made cases with known answers.
# --------------------------------------------------------------------------------------

class Channels(nn.Module):
    """dead, constant, x0, 2*x1, 0.5 + 1e-7 x0 (constant to the tolerance), 0.5 + 1e-3 x0."""

    def forward(self, x):
        x0, x1 = x[:, :1], x[:, 1:2]
        return torch.cat([torch.zeros_like(x0), torch.full_like(x0, 0.5), x0, 2 * x1,
                          0.5 + 1e-7 * x0, 0.5 + 1e-3 * x0], 1)


class Rows(nn.Module):
    """x2 on the last row only, x2 on the first row only, x3 (a copy)."""

    def forward(self, x):
        H = x.shape[-2]
        rows = torch.arange(H, device=x.device).view(1, 1, H, 1)
        x2, x3 = x[:, 2:3], x[:, 3:4]
        return torch.cat([x2 * (rows == H - 1), x2 * (rows == 0), x3], 1)


class EdgeNet(nn.Module):
    """8x8 input: stem 6x8x8, b1 3x8x8, b2 4x4, b3 2x2, b4 4x4, b5 1x1; a dead logit."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = Channels()
        self.b1 = nn.Sequential(nn.Identity(), Rows())
        self.b2 = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(6, 5, 3, stride=2, padding=1), nn.ReLU())
        self.b4 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(5, 5, 3, padding=1))
        self.b5 = nn.Conv2d(5, 3, 3, stride=4, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            for m in (self.b2[0], self.b3[0], self.b4[1], self.b5, self.fc):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            self.fc.weight[0].zero_()
            self.fc.bias[0] = 0.0

    def forward(self, x):
        for block in (self.stem, self.b1, self.b2, self.b3, self.b4, self.b5):
            x = block(x)
        return self.fc(self.pool(x).flatten(1))


EDGE_POINTS = ["stem", "b1", "b2", "b3", "b4", "b5"]


@pytest.fixture(scope="module")
def edge_runs():
    model = EdgeNet().eval()
    images = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    transforms = ([shift(s, s, "zero") for s in (1, 2, 3, 4)] + [shift(s, s) for s in (1, 3, 4)]
                  + [("rot", 1), ("rot", 2), ("rot", 3), ("flip", "horizontal")])
    return oracle_and_report(model, images, transforms, ("correlation", "cosine"),
                             ("per_image", "across_images"), points=EDGE_POINTS, batch_size=4)


def row(P, point, transform, metric):
    q = P[(P["point"] == point) & (P["transform"] == transform) & (P["metric"] == metric)]
    assert len(q) == 1
    return q.iloc[0]


@pytest.mark.parametrize("vector_mode", ["per_image", "across_images"])
def test_edge_cases_agree_with_the_oracle(edge_runs, vector_mode):
    mine, report = edge_runs[vector_mode]
    assert_agrees(mine, report)
    assert [p for p in report.points["point"].unique()] == EDGE_POINTS + ["pool", "final"]


def test_dead_and_constant_channels_are_undefined_and_left_out(edge_runs):
    P = edge_runs["per_image"][1].points
    for t in P["transform"].unique():
        # stem: dead, constant and constant-to-1e-5 channels are undefined for correlation,
        # only the dead one for cosine; the others follow the transform exactly
        c = row(P, "stem", t, "correlation")
        assert c["undefined_fraction"] == pytest.approx(3 / 6)
        assert c["layer_undefined_fraction"] == pytest.approx(3 / 6)
        assert c["channel"] == pytest.approx(1, abs=1e-5)
        assert c["layer"] == pytest.approx(1, abs=1e-5)
        s = row(P, "stem", t, "cosine")
        assert s["undefined_fraction"] == pytest.approx(1 / 6)
        assert s["channel"] == pytest.approx(1, abs=1e-5)
        assert s["layer"] == pytest.approx(1, abs=1e-5)


def test_undefined_source_and_undefined_target(edge_runs):
    # b1 under a zero-filled shift by one: the last-row channel has nothing left in the overlap
    # of T_l(f(x)) (source undefined: channel and layer NaN); the first-row channel has nothing
    # in the overlap of f(T(x)) (target undefined: channel NaN, its layer score from the others)
    P = edge_runs["per_image"][1].points
    for metric in ("correlation", "cosine"):
        r = row(P, "b1", "translation(1,1,zero)", metric)
        assert r["undefined_fraction"] == pytest.approx(2 / 3)
        assert r["layer_undefined_fraction"] == pytest.approx(1 / 3)
        assert r["channel"] == pytest.approx(1, abs=1e-5)      # the copy, alone


def test_a_point_all_undefined_is_skipped_by_family_and_part_means(edge_runs):
    P, Q = edge_runs["per_image"][1].points, edge_runs["per_image"][1].parts
    # b3 (2x2) under a zero shift of 4 on 8 px: one position left -> correlation undefined
    r = row(P, "b3", "translation(4,4,zero)", "correlation")
    assert np.isnan(r["channel"]) and np.isnan(r["layer"]) and r["undefined_fraction"] == 1
    assert not np.isnan(row(P, "b3", "translation(4,4,zero)", "cosine")["channel"])
    # the middle part (b2, b3): per point the family mean over its defined transforms, then
    # the mean over points (SPEC's order), which differs from the other order here
    fam = P[(P["family"] == "translation-zero") & (P["metric"] == "correlation")]
    per_point = fam[fam["part"] == "middle"].groupby("point")["channel"].mean()   # skips NaN
    per_transform = fam[fam["part"] == "middle"].groupby("transform")["channel"].mean()
    part = Q[(Q["part"] == "middle") & (Q["family"] == "translation-zero")
             & (Q["metric"] == "correlation")].iloc[0]
    assert part["channel"] == pytest.approx(per_point.mean(), abs=1e-12)
    assert abs(per_point.mean() - per_transform.mean()) > 1e-3
    # its undefined fraction counts the all-undefined entries: the mean of the points' fractions
    fr = fam[fam["part"] == "middle"].groupby("point")["undefined_fraction"].mean()
    assert part["undefined_fraction"] == pytest.approx(fr.mean(), abs=1e-12)
    assert fr["b3"] >= 1 / 4


def test_a_dead_logit_is_undefined_across_images(edge_runs):
    P = edge_runs["across_images"][1].points
    for t in P["transform"].unique():
        for metric in ("correlation", "cosine"):
            r = row(P, "final", t, metric)
            assert r["undefined_fraction"] == pytest.approx(1 / 4)
            assert r["n_images"] == 5
    P = edge_runs["per_image"][1].points
    assert (P[P["point"] == "final"]["undefined_fraction"] == 0).all()


def test_non_square_input_agrees_with_the_oracle():
    model = EdgeNet().eval()
    images = torch.randn(4, 4, 8, 12, generator=torch.Generator().manual_seed(2))
    transforms = [shift(1, 2), shift(-3, 5, "zero"), shift(2, -6, "zero", "nearest"),
                  shift(3, 3, rounding="nearest"), ("flip", "vertical"), ("flip", "horizontal")]
    runs = oracle_and_report(model, images, transforms, ("correlation", "cosine"),
                             ("per_image", "across_images"), points=EDGE_POINTS, batch_size=3)
    for mine, report in runs.values():
        assert_agrees(mine, report)


def test_the_oracle_itself():
    """The oracle's own pieces on cases worked by hand."""
    assert [scaled(s, 16, 64, "down") for s in (3, 4, 7, -7)] == [0, 1, 1, -1]
    assert [scaled(s, 16, 64, "nearest") for s in (2, -2, 6, -6, 1)] == [1, -1, 2, -2, 0]
    u = np.array([[[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    v = np.array([[[2.0, 4.0, 6.0], [1.0, 0.0, 0.0], [-1.0, -2.0, -3.0]]])
    c, l, a, _ = score_matrix(u, v, "correlation")
    assert c[0, 0] == pytest.approx(1) and np.isnan(c[0, 1]) and np.isnan(c[0, 2])
    assert l[0, 0] == pytest.approx(1) and a[0, 0] == 0 and np.isnan(l[0, 1]) and a[0, 1] == -1
    c, l, a, _ = score_matrix(u, v, "cosine")
    assert c[0, 0] == pytest.approx(1) and np.isnan(c[0, 1])
    assert c[0, 2] == 0.0                                # negative cosine -> 0
    assert l[0, 2] == pytest.approx(6 / np.sqrt(14) / np.sqrt(3)) and a[0, 2] == 0
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    assert (move_zero(x, 1, -1)[0, 0, 1:, :3] == x[0, 0, :3, 1:]).all()
    assert move_zero(x, 1, -1)[0, 0, 0].sum() == 0 and move_zero(x, 1, -1)[0, 0, :, 3].sum() == 0
    rotated = torch.rot90(torch.from_numpy(x), 1, (-2, -1)).numpy()
    assert np.array_equal(np.rot90(x, 1, axes=(-2, -1)), rotated)
