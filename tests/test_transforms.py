import pytest
import torch

import equifast as ef
from equifast.transforms import scale_shift


def test_rotation_matches_rot90_and_hand_case():
    x = torch.arange(4.0).view(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    assert torch.equal(ef.Rotation(1)(x), torch.tensor([[[[1.0, 3.0], [0.0, 2.0]]]]))
    y = torch.randn(2, 3, 5, 5)
    for q in (1, 2, 3):
        assert torch.equal(ef.Rotation(q)(y), torch.rot90(y, q, dims=(-2, -1)))


def test_flips_match_torch_flip():
    y = torch.randn(2, 3, 4, 6)
    assert torch.equal(ef.Flip("horizontal")(y), torch.flip(y, dims=(-1,)))
    assert torch.equal(ef.Flip("vertical")(y), torch.flip(y, dims=(-2,)))


def test_circular_translation_is_roll():
    y = torch.randn(2, 3, 8, 8)
    assert torch.equal(ef.Translation(3, -2)(y), torch.roll(y, (3, -2), (-2, -1)))


def test_zero_translation_moves_content_and_fills_zero():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    out = ef.Translation(1, 1, mode="zero")(x)
    want = torch.tensor([[0.0, 0, 0], [0, 0, 1], [0, 3, 4]]).view(1, 1, 3, 3)
    assert torch.equal(out, want)


@pytest.mark.parametrize("shift,map_len,input_len,down,nearest", [
    (5, 112, 224, 2, 3), (5, 7, 224, 0, 0), (32, 7, 224, 1, 1), (-5, 112, 224, -2, -3),
    (3, 2, 4, 1, 2), (1, 1, 2, 0, 1)])
def test_scaled_shift_rounding(shift, map_len, input_len, down, nearest):
    assert scale_shift(shift, map_len, input_len, "down") == down
    assert scale_shift(shift, map_len, input_len, "nearest") == nearest


def test_scaled_shift_zero_is_identity_on_small_maps():
    t = ef.Translation(3, 3)
    f = torch.randn(1, 2, 4, 4)
    assert torch.equal(t.on_map(f, (32, 32)), f)  # 3 * 4 / 32 rounds down to 0


def test_index_map_reads_values_like_the_transform():
    f = torch.randn(2, 3, 6, 6)
    for t in ef.rotations() + ef.flips() + [ef.Translation(2, -1), ef.Translation(-2, 3, mode="zero"),
                                            ef.Identity()]:
        a, b = t.index_map((6, 6), (12, 12))
        moved = t.on_map(f, (12, 12))
        assert torch.equal(moved.flatten(2)[..., b], f.flatten(2)[..., a]), t.name


def test_zero_index_map_is_the_overlap():
    a, b = ef.Translation(1, 0, mode="zero").index_map((3, 3), (3, 3))
    assert b.tolist() == [3, 4, 5, 6, 7, 8] and a.tolist() == [0, 1, 2, 3, 4, 5]


def test_families():
    assert [t.name for t in ef.diagonal_shifts(1, 3)] == ["translation(1,1)", "translation(2,2)", "translation(3,3)"]
    assert [t.quarter_turns for t in ef.rotations()] == [1, 2, 3]
    assert {t.family for t in ef.rotations()} == {"rotation"}


def test_rounding_is_part_of_the_name():
    # two different transforms must not share a report row
    assert ef.Translation(1, 1, rounding="nearest").name == "translation(1,1,nearest)"
    assert [t.name for t in ef.parse_transforms("translation:2:zero:nearest")] == [
        "translation(2,2,zero,nearest)"]
    assert ef.parse_transforms("translation:2:nearest")[0] == ef.Translation(2, 2, rounding="nearest")
    with pytest.raises(ValueError, match="'down' or 'nearest'"):
        ef.parse_transforms("translation:2:up")


def test_parse_transforms():
    ts = ef.parse_transforms("translation:1-4:zero,rotation:270,flip:vertical")
    assert [t.name for t in ts] == ["translation(1,1,zero)", "translation(2,2,zero)", "translation(3,3,zero)",
                                    "translation(4,4,zero)", "rotation(270)", "flip(vertical)"]
    with pytest.raises(ValueError, match="transform spec"):
        ef.parse_transforms("shear:3")
    with pytest.raises(ValueError, match="multiples of 90"):
        ef.parse_transforms("rotation:45")
    for whole in ("rotation:0", "rotation:360"):  # the identity, not a rotation to average in
        with pytest.raises(ValueError, match="whole turn.*ef.Identity"):
            ef.parse_transforms(whole)
    # options that contradict each other, or options where there are none, are not dropped
    with pytest.raises(ValueError, match="two mode options, 'zero' and 'circular'"):
        ef.parse_transforms("translation:1-3:zero:circular")
    with pytest.raises(ValueError, match="two rounding options"):
        ef.parse_transforms("translation:1-3:down:nearest")
    with pytest.raises(ValueError, match="identity takes no options"):
        ef.parse_transforms("identity:foo")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="square"):
        ef.Rotation(1)(torch.randn(1, 1, 4, 5))
    with pytest.raises(ValueError, match="larger than the 8x8 image"):
        ef.Translation(8, 0)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="no overlap"):
        ef.Translation(3, 3, mode="zero", rounding="nearest").on_map(torch.randn(1, 1, 2, 2), (4, 4))
    with pytest.raises(ValueError, match="'circular' or 'zero'"):
        ef.Translation(1, 1, mode="reflect")
    with pytest.raises(TypeError, match="`dy` to be an int"):
        ef.Translation(1.5, 1)
    with pytest.raises(ValueError, match="horizontal"):
        ef.Flip("diagonal")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        ef.Rotation(1)(torch.randn(4))


class _Broken(ef.transforms.Transform):
    """A user's transform whose on_map does more than move values."""

    def __init__(self, on_map):
        self._on_map = on_map

    @property
    def name(self):
        return "broken"

    def on_map(self, f, input_size, fill=0.0):
        return self._on_map(f)


@pytest.mark.parametrize("on_map, what", [
    (lambda f: f + 1, r"values in \[1, 16\]"),                        # one past the map
    (lambda f: f - 2, r"values in \[-2, 13\]"),                       # below `fill`
    (lambda f: f[..., :3], r"shape \(1, 4, 3\)"),                     # cropped
    (lambda f: f.double(), "torch.float64 tensor"),                   # interpolated
], ids=["past-end", "below-fill", "cropped", "float"])
def test_index_map_rejects_an_on_map_that_does_not_move_positions(on_map, what):
    # The operator trusts these maps (no bounds check, hence no host sync, on CUDA).
    with pytest.raises(ValueError, match=rf"Expected broken.on_map to move the positions of a "
                                         rf"4x4 map .*{what}"):
        _Broken(on_map).index_map((4, 4), (4, 4))


class _OwnIndexMap(ef.transforms.Transform):
    """A user's transform that overrides index_map itself, wrongly."""

    @property
    def name(self):
        return "own"

    def on_map(self, f, input_size, fill=0.0):
        return f

    def index_map(self, map_size, input_size, device=None):
        n = map_size[0] * map_size[1]
        return torch.arange(1, n + 1, device=device), torch.arange(n, device=device)


@pytest.mark.skipif(not ef.ops.available(), reason="the operator's path")
def test_functional_checks_an_overridden_index_map():
    # the operator is called without its own bounds check: the cached map is checked instead
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"own.index_map.* flat positions in \[0, 16\)"):
        ef.functional.equivariance_scores(x, x, _OwnIndexMap())
