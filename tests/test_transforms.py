import dataclasses
import re

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


@pytest.mark.parametrize("call, name, size", [
    (lambda t: t.index_map((4.5, 4), (8, 8)), "map_size", (4.5, 4)),   # was read as 4x4
    (lambda t: t.index_map((4, 4), (8, 8.5)), "input_size", (8, 8.5)),  # was read as 8x8
    (lambda t: t.index_map((4, 4), (0, 8)), "input_size", (0, 8)),      # ZeroDivisionError
    (lambda t: t.index_map((-2, 4), (8, 8)), "map_size", (-2, 4)),      # torch's RuntimeError
    (lambda t: t.index_map(4, (8, 8)), "map_size", 4),                  # "cannot unpack"
    (lambda t: t.map_shift((4, 4), (8, 0)), "input_size", (8, 0)),      # ZeroDivisionError
    (lambda t: t.on_map(torch.zeros(1, 4, 4), (0, 0)), "input_size", (0, 0)),
    (lambda t: t.index_map((4, 4), (True, 8)), "input_size", (True, 8)),  # was read as 1x8
    (lambda t: t.index_map((4, torch.tensor(True)), (8, 8)), "map_size", (4, torch.tensor(True))),
], ids=["map-fraction", "input-fraction", "input-zero", "map-negative", "map-int",
        "map_shift-zero", "on_map-zero", "input-bool", "map-bool-tensor"])
def test_index_map_sizes_are_two_positive_ints(call, name, size):
    with pytest.raises(ValueError, match=re.escape(
            f"Expected `{name}` to be (H, W), two positive ints, but got {size!r}.")):
        call(ef.Translation(2, 2))


def test_index_map_takes_whole_float_sizes():
    t = ef.Translation(2, -2, mode="zero")
    f = torch.randn(1, 3, 4, 4)
    a, b = t.index_map((4.0, 4.0), (8.0, 8))
    assert torch.equal(t.on_map(f, (8, 8)).flatten(1)[:, b], f.flatten(1)[:, a])


def test_zero_index_map_is_the_overlap():
    a, b = ef.Translation(1, 0, mode="zero").index_map((3, 3), (3, 3))
    assert b.tolist() == [3, 4, 5, 6, 7, 8] and a.tolist() == [0, 1, 2, 3, 4, 5]


def test_families():
    assert [t.name for t in ef.diagonal_shifts(1, 3)] == ["translation(1,1)", "translation(2,2)", "translation(3,3)"]
    assert [t.quarter_turns for t in ef.rotations()] == [1, 2, 3]
    assert {t.family for t in ef.rotations()} == {"rotation"}
    # shifts measured another way are another family: a report never averages them together
    ts = ef.parse_transforms("translation:1-2,translation:1-2:zero,translation:3:nearest,"
                             "translation:3:zero:nearest")
    assert [t.family for t in ts] == ["translation"] * 2 + ["translation-zero"] * 2 + [
        "translation-nearest", "translation-zero-nearest"]
    moved = dataclasses.replace(ef.Translation(2, 2, mode="zero"), mode="circular")
    assert moved == ef.Translation(2, 2) and moved.family == "translation"
    x = torch.randn(4, 3, 16, 16)
    nn = torch.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    points = ef.measure(model, x, transforms=ts[:4], batch_size=4).points
    for family, names in (("translation", ts[:2]), ("translation-zero", ts[2:4])):
        rows = points[points.family == family]
        assert sorted(rows["transform"].unique()) == sorted(t.name for t in names)


def test_rounding_is_part_of_the_name():
    # two different transforms must not share a report row
    assert ef.Translation(1, 1, rounding="nearest").name == "translation(1,1,nearest)"
    assert [t.name for t in ef.parse_transforms("translation:2:zero:nearest")] == [
        "translation(2,2,zero,nearest)"]
    assert ef.parse_transforms("translation:2:nearest")[0] == ef.Translation(2, 2, rounding="nearest")
    with pytest.raises(ValueError, match=r"unknown option 'up': a mode \(circular, zero\) or a "
                                         r"rounding \(down, nearest\)"):
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
        # a spec is the command line's: the advice is the spec, not Python's ef.Identity()
        with pytest.raises(ValueError, match="whole turn.*use the spec 'identity'") as err:
            ef.parse_transforms(whole)
        assert "ef.Identity" not in str(err.value)
    for q in (0, 4):  # the Python constructor keeps the Python advice
        with pytest.raises(ValueError, match=r"whole turn.*use ef\.Identity\(\)"):
            ef.Rotation(q)
    # options that contradict each other, or options where there are none, are not dropped
    with pytest.raises(ValueError, match="two mode options, 'zero' and 'circular'"):
        ef.parse_transforms("translation:1-3:zero:circular")
    with pytest.raises(ValueError, match="two rounding options"):
        ef.parse_transforms("translation:1-3:down:nearest")
    with pytest.raises(ValueError, match="identity takes no options"):
        ef.parse_transforms("identity:foo")
    # a flip's direction in any case, as the kinds and options are taken ('flip:Horizontal' failed)
    assert ef.parse_transforms("flip:Horizontal,FLIP:VERTICAL, flip: vertical") == [
        ef.Flip("horizontal"), ef.Flip("vertical"), ef.Flip("vertical")]


def test_a_reports_transform_names_parse_back_to_its_transforms():
    # meta["transforms"] lists names ("translation(1,1)"), which --transforms refused: a run
    # could not be repeated from its meta, nor a shift off the diagonal given on the command line
    measured = [ef.Translation(2, 5), ef.Translation(-1, 0, mode="zero"),
                ef.Translation(3, 3, rounding="nearest"),
                ef.Translation(1, 4, mode="zero", rounding="nearest"), *ef.rotations(),
                *ef.flips(), ef.Identity()]
    names = [t.name for t in measured]
    assert ef.parse_transforms(",".join(names)) == measured
    assert ef.parse_transforms(names) == measured  # as a list, one name each
    assert ef.parse_transforms("translation:1-2, Rotation(180)") == [
        ef.Translation(1, 1), ef.Translation(2, 2), ef.Rotation(2)]
    # spaces before the parenthesis, as inside it ("unknown kind 'translation (2,5)'; did you
    # mean 'translation'?")
    assert ef.parse_transforms("translation (2, 5, zero), rotation (90),flip (vertical)") == [
        ef.Translation(2, 5, mode="zero"), ef.Rotation(1), ef.Flip("vertical")]
    for bad, why in (("translation(1)", "translation(dy,dx)"), ("translation(1,1,up)", "zero and/or"),
                     ("translation(1,1,zero,zero)", "zero and/or"), ("rotation(45)", "multiples of 90"),
                     ("flip(diagonal)", "'horizontal' or 'vertical'"), ("rotation()", "unknown kind"),
                     ("translation(0,0)", "identity")):
        with pytest.raises(ValueError, match=rf"but got {re.escape(repr(bad))} \(.*{re.escape(why)}"):
            ef.parse_transforms(bad)


def test_malformed_spec_numbers_say_the_expected_form():
    # a bad number ended in Python's "invalid literal for int() with base 10: ''"
    for spec in ("translation:-3", "translation:1-x", "translation:1.5", "translation:1--3",
                 "rotation:abc", "rotation:90.0"):
        with pytest.raises(ValueError) as err:
            ef.parse_transforms(spec)
        msg = str(err.value)
        assert "\n" not in msg and repr(spec) in msg and "invalid literal" not in msg, msg
        assert "'translation:4'" in msg and "'translation:1-16:zero:nearest'" in msg, msg
        form = "START-STOP or one SHIFT" if spec.startswith("translation") else "multiple of 90"
        assert form in msg, msg
    # a negative shift is the Python API's: specs shift by (s, s), s >= 1
    for spec in ("translation:-3", "translation:1--3"):
        with pytest.raises(ValueError, match=r"negative shift use the Python API, "
                                             r"ef\.Translation\(-3, -3\)"):
            ef.parse_transforms(spec)
    with pytest.raises(ValueError) as err:
        ef.parse_transforms("translation:1-x")
    assert "negative" not in str(err.value)
    # what parsed before still does, spaces around the numbers too
    assert [t.name for t in ef.parse_transforms("translation: 1 - 2,rotation: -90")] == [
        "translation(1,1)", "translation(2,2)", "rotation(270)"]
    # and around the options
    assert ef.parse_transforms("translation:1-2 : Zero : nearest ") == [
        ef.Translation(s, s, mode="zero", rounding="nearest") for s in (1, 2)]


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


def _tiny_classifier():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))


def test_a_transform_whose_images_are_not_like_its_input_is_named():
    # the model failed on them ("expected scalar type Double but found Float"), naming no transform
    x = torch.rand(2, 3, 4, 4)
    for on_map, got in ((lambda f: f.double() if f.is_floating_point() else f, "torch.float64 tensor"),
                        (lambda f: f[..., :3] if f.is_floating_point() else f, r"shape \(2, 3, 4, 3\)"),
                        (lambda f: f.tolist() if f.is_floating_point() else f, "a list")):
        _Broken(on_map).index_map((4, 4), (4, 4))  # its positions move as they should
        with pytest.raises(ValueError, match=r"Expected broken.on_map to return images like its "
                                             rf"input \(a torch.float32 tensor .*\), but it returned .*{got}"):
            _Broken(on_map)(x)
        with pytest.raises(ValueError, match="broken.on_map to return images like its input"):
            ef.measure(_tiny_classifier(), x, transforms=[_Broken(on_map)])


@pytest.mark.parametrize("attr, value", [("name", None), ("name", 5), ("name", " "),
                                         ("family", None), ("family", 3), ("family", "")])
def test_a_transform_without_a_name_or_family_is_refused(attr, value):
    # family None: measure's report had no part rows, and no word why
    class Unlabelled(ef.Flip):
        pass

    setattr(Unlabelled, attr, value)
    with pytest.raises(ValueError, match=rf"`{attr}` of the transform Unlabelled to be a non-empty "
                                         rf"string .*but got {value!r}"):
        ef.measure(_tiny_classifier(), torch.rand(2, 3, 8, 8), transforms=[Unlabelled()])


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


class _ReturnsIndexMap(_OwnIndexMap):
    """A user's index_map returning given tensors."""

    def __init__(self, make):
        self._make = make

    def index_map(self, map_size, input_size, device=None):
        return self._make(map_size[0] * map_size[1])


@pytest.mark.skipif(not ef.ops.available(), reason="the operator's path")
@pytest.mark.parametrize("make", [
    lambda n: (torch.arange(n) - 1, torch.arange(n)),                       # reads before the map
    lambda n: (torch.arange(n), torch.arange(n).flip(0) - 1),               # writes before it
    lambda n: (torch.arange(0), torch.arange(0)),                           # compares nothing
    lambda n: (torch.arange(n), torch.arange(n - 1)),                       # unpaired positions
    lambda n: (torch.arange(n, dtype=torch.int32), torch.arange(n, dtype=torch.int32)),
    lambda n: (torch.arange(n).view(2, -1), torch.arange(n).view(2, -1)),    # not flat
], ids=["negative-a", "negative-b", "empty", "lengths", "int32", "2d"])
def test_functional_rejects_every_kind_of_bad_overridden_index_map(make):
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"own.index_map.* two int64 \[P\] tensors"):
        ef.functional.equivariance_scores(x, x, _ReturnsIndexMap(make))
    good = _ReturnsIndexMap(lambda n: (torch.arange(n).flip(0), torch.arange(n)))  # a 180° turn
    s = ef.functional.equivariance_scores(x, torch.rot90(x, 2, dims=(-2, -1)), good)
    assert torch.allclose(s.channel, torch.ones(1, 2))


def test_scaled_shift_uses_height_for_dy_and_width_for_dx():
    # a non-square input and map: dy scales by h / H, dx by w / W (by hand: 4 * 4 / 8 = 2 and
    # 6 * 8 / 32 = 1.5, rounded down to 1)
    t = ef.Translation(4, 6)
    assert t.map_shift((4, 8), (8, 32)) == (2, 1)
    f = torch.randn(1, 2, 4, 8)
    assert torch.equal(t.on_map(f, (8, 32)), torch.roll(f, (2, 1), (-2, -1)))
    z = ef.Translation(4, 6, mode="zero")
    a, b = z.index_map((4, 8), (8, 32))
    want = torch.zeros(4, 8)
    want[2:, 1:] = f[0, 0, :2, :7]
    assert torch.equal(z.on_map(f, (8, 32))[0, 0], want) and len(a) == 2 * 7


def test_every_axis_is_checked_for_a_shift_too_large():
    with pytest.raises(ValueError, match="larger than the 8x8 image"):
        ef.Translation(0, 8)(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="larger than the 8x4 image"):
        ef.Translation(1, -4)(torch.randn(1, 1, 8, 4))
    with pytest.raises(ValueError, match="no overlap"):  # dx = 3 * 2 / 4 = 1.5, nearest: 2
        ef.Translation(0, 3, mode="zero", rounding="nearest").on_map(torch.randn(1, 1, 2, 2), (4, 4))


def test_index_map_rejects_an_on_map_that_leaves_nothing_to_compare():
    # values in range, but every position vacated: no compared position rather than NaN scores
    with pytest.raises(ValueError, match="leaves no position to compare on a 4x4 map"):
        _Broken(lambda f: torch.full_like(f, -1)).index_map((4, 4), (4, 4))


@pytest.mark.parametrize("start,stop", [(0, 3), (-1, 2), (5, 3)])
def test_diagonal_shifts_rejects_bad_ranges(start, stop):
    with pytest.raises(ValueError, match="1 <= start <= stop"):
        ef.diagonal_shifts(start, stop)


@pytest.mark.parametrize("start,stop", [(1, 2.5), (1.0, 3), ("1", 3), (1, None), (True, 3)])
def test_diagonal_shifts_rejects_shifts_that_are_no_integers(start, stop):
    # range() or `<` failed on them ("'float' object cannot be interpreted as an integer"), and
    # True was taken as 1
    with pytest.raises(TypeError, match=r"`start` and `stop` to be integers .* but got start="):
        ef.diagonal_shifts(start, stop)


def test_names_identify_the_transform_so_repeats_are_caught():
    # a quarter turn back is three forward: one name, so the pair is a repeat
    assert ef.Rotation(-1).name == ef.Rotation(3).name == "rotation(270)"
    assert ef.Rotation(5).name == ef.Rotation(1).name == "rotation(90)"
    # equal as their names are: they were two keys of a set, a dict or the index-map cache
    assert ef.Rotation(-1) == ef.Rotation(3) and ef.Rotation(5) == ef.Rotation(1)
    assert len({ef.Rotation(-1), ef.Rotation(3), ef.Rotation(7)}) == 1
    from equifast.transforms import check_distinct

    check_distinct(ef.rotations() + ef.flips())
    for repeated in ([ef.Rotation(3), ef.Rotation(-1)], [ef.Flip(), ef.Rotation(1), ef.Flip()]):
        with pytest.raises(ValueError, match="distinct transforms"):
            check_distinct(repeated)
    assert [t.name for t in ef.parse_transforms("ROTATION:90, Flip:vertical")] == [
        "rotation(90)", "flip(vertical)"]  # kinds are case-insensitive, spaces ignored
    assert ef.parse_transforms("translation") == ef.diagonal_shifts(1, 32)  # the thesis' 1..32


def test_bools_are_not_shifts_or_turns():
    with pytest.raises(TypeError, match="`dx` to be an int"):
        ef.Translation(1, True)
    with pytest.raises(TypeError, match="`quarter_turns` to be an int"):
        ef.Rotation(True)
    # a bool tensor (a mask's element) was taken as 1 by operator.index: a shift or turn of 1
    with pytest.raises(TypeError, match=r"`dy` to be an int, but got tensor\(True\)"):
        ef.Translation(torch.tensor(True), 1)
    with pytest.raises(TypeError, match=r"`quarter_turns` to be an int, but got tensor\(True\)"):
        ef.Rotation(torch.tensor(True))


def test_numpy_and_torch_integers_are_shifts_and_turns():
    # `for s in np.arange(1, 33)` hands NumPy ints: the same transform as Python's, stored as int
    import json

    import numpy as np

    x = torch.randn(1, 2, 8, 8)
    for made, plain in ((ef.Translation(np.int64(3), np.int32(-2)), ef.Translation(3, -2)),
                        (ef.Translation(torch.tensor(2), 1, mode="zero"), ef.Translation(2, 1, mode="zero")),
                        (ef.Rotation(np.int64(3)), ef.Rotation(3))):
        assert made == plain and hash(made) == hash(plain)
        assert all(type(v) is int for v in vars(made).values() if not isinstance(v, str))
        assert torch.equal(made(x), plain(x))
        for got, want in zip(made.index_map((8, 8), (16, 16)), plain.index_map((8, 8), (16, 16))):
            assert torch.equal(got, want)
        json.dumps(vars(made))  # the report's meta keeps them
    for bad in (np.float64(1.0), np.bool_(True), torch.tensor(1.0), "1"):
        with pytest.raises(TypeError, match="`dy` to be an int"):
            ef.Translation(bad, 1)


def test_rotation_of_a_non_square_map_is_a_clear_error():
    # a square input can still give a non-square map (asymmetric strides or padding)
    with pytest.raises(ValueError, match="square image or map for rotation\\(90\\), but got 4x6"):
        ef.Rotation(1).on_map(torch.randn(1, 2, 4, 6), (8, 8))


def test_a_custom_transform_that_can_change_is_scored_as_it_is_now():
    # a plain (mutable) dataclass: unhashable, so it could not be used at all; a plain class
    # that changed kept the index maps of its first use on the operator backend
    from dataclasses import dataclass

    @dataclass
    class Roll(ef.Transform):
        shift: int = 1
        family: str = "roll"

        @property
        def name(self):
            return f"roll({self.shift})"

        def on_map(self, f, input_size, fill=0.0):
            return torch.roll(f, self.shift, dims=-1)

    f = torch.randn(2, 3, 5, 5)
    t = Roll(1)
    for backend in ("operator", "reference"):
        assert ef.functional.equivariance_scores(f, t(f), t, backend=backend).channel.min() > 1 - 1e-5
    t.shift = 2
    for backend in ("operator", "reference"):
        s = ef.functional.equivariance_scores(f, torch.roll(f, 2, dims=-1), t, backend=backend)
        assert s.channel.min() > 1 - 1e-5, backend


def test_a_shift_as_large_as_the_image_is_not_called_larger():
    # the condition is |shift| >= size: a shift equal to the size is not larger than the image
    for t in (ef.Translation(8, 8), ef.Translation(0, 8), ef.Translation(-8, 1)):
        with pytest.raises(ValueError, match=rf"^{re.escape(t.name)} is as large as or larger "
                                             r"than the 8x8 image: expected \|dy\| < 8 and \|dx\| < 8"):
            t(torch.randn(1, 1, 8, 8))
    ef.Translation(7, -7)(torch.randn(1, 1, 8, 8))  # smaller than the image: taken


def test_index_map_refuses_an_input_the_transform_refuses():
    # the maps go to ops.equivariance_scores as they are: a shift as large as the input scaled
    # to a whole turn of the map, an identity map that scored any map 1 under a "translation"
    f = torch.randn(2, 3, 4, 4)
    ftx = torch.roll(f, (1, 1), (-2, -1))  # what a shift of 2 on an 8x8 input moves a 4x4 map by
    a, b = ef.Translation(2, 2).index_map((4, 4), (8, 8))
    moved = torch.roll(torch.arange(16).view(4, 4), (1, 1), (0, 1)).flatten()
    assert torch.equal(a, moved[b])
    for t, size, match in ((ef.Translation(8, 8), (8, 8), "as large as or larger than the 8x8"),
                           (ef.Translation(-9, 1, mode="zero"), (8, 8), "larger than the 8x8"),
                           (ef.Rotation(1), (8, 6), "square image or map for rotation\\(90\\), but got 8x6")):
        with pytest.raises(ValueError, match=match):
            t.index_map((4, 4), size)
        with pytest.raises(ValueError, match=match):  # as the public function says
            ef.functional.equivariance_scores(f, ftx, t, input_size=size)


def test_a_family_is_no_argument_and_no_shift_is_no_translation():
    with pytest.raises(TypeError):
        ef.Flip("horizontal", "vertical")  # a stray argument once became the family
    with pytest.raises(TypeError):
        ef.Rotation(1, "flip")
    assert ef.Flip("vertical").family == "flip" and ef.Rotation(3).family == "rotation"
    with pytest.raises(ValueError, match="dy and dx are both 0; that is the identity"):
        ef.Translation(0, 0)
    assert ef.Translation(0, 3).family == "translation"
    for spec, match in (("translation:1-3:ZERO", None), ("translation:1-3:zeros", "unknown option 'zeros'")):
        if match is None:
            assert [t.mode for t in ef.parse_transforms(spec)] == ["zero"] * 3
        else:
            with pytest.raises(ValueError, match=match):
                ef.parse_transforms(spec)
    with pytest.raises(TypeError, match="transform specs as a string or a list of strings"):
        ef.parse_transforms(None)


def _padded_shift(f, input_size, fill=0.0):
    """A shift by one column that pads with 0 whatever `fill` is: position 0 lands twice."""
    return torch.nn.functional.pad(f[..., :-1], (1, 0))


@pytest.mark.parametrize("on_map, got", [
    (lambda f: f.to("meta"), "a tensor on meta"),       # moved elsewhere (.cpu() of a CUDA map)
    (lambda f: f.numpy(), "a ndarray"),                # NumPy's own flip, say
], ids=["other-device", "not-a-tensor"])
def test_index_map_rejects_an_on_map_that_returns_something_else(on_map, got):
    # they failed inside torch.aminmax ("Cannot copy out of meta tensor", a TypeError), or on
    # CUDA in the operator, naming neither the transform nor on_map
    with pytest.raises(ValueError, match=rf"Expected broken.on_map to return a tensor where its "
                                         rf"input lies \(cpu\), but it returned {got}\."):
        _Broken(on_map).index_map((4, 4), (4, 4))


@pytest.mark.parametrize("on_map, copied", [
    (lambda f: torch.cat([f[..., :1, :], f[..., :-1, :]], dim=-2), 0),  # row 0 copied to row 1
    (lambda f: _padded_shift(f, None), 0),                                # `fill` ignored
    (lambda f: torch.where(f == 5, f.new_tensor(6), f), 6),              # 6 lands at 5 and 6
], ids=["copied-row", "fill-ignored", "one-value"])
def test_index_map_rejects_an_on_map_that_copies_a_position(on_map, copied):
    # Such a map is in range, so it passed; its scores compared one position several times and
    # another not at all, silently.
    f = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=rf"broken.on_map to move each position of a 4x4 map to "
                                         rf"one place at most, but position {copied} \(row "
                                         rf"{copied // 4}, column {copied % 4}\) lands in several"):
        ef.functional.equivariance_scores(f, on_map(f), _Broken(on_map))


def test_index_map_keeps_a_transform_that_drops_positions():
    # dropping is moving to nowhere: a zero-filled shift keeps each kept position once
    a, b = ef.Translation(1, 2, mode="zero").index_map((4, 5), (4, 5))
    assert len(a) == 3 * 3 and len(set(a.tolist())) == len(a) and len(set(b.tolist())) == len(b)


@pytest.mark.parametrize("make, which, position", [
    (lambda n: (torch.zeros(n, dtype=torch.int64), torch.arange(n)), "read", 0),
    (lambda n: (torch.arange(n), torch.arange(n) // 2), "written", 0),
], ids=["read-twice", "written-twice"])
def test_functional_rejects_an_overridden_index_map_that_repeats_a_position(make, which, position):
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=rf"own.index_map.* to pair each position once at most, "
                                         rf"but position {position} is {which} twice"):
        ef.functional.equivariance_scores(x, x, _ReturnsIndexMap(make))


class _FlippedShift(ef.Translation):
    """A user's subclass with state beyond Translation's fields (not a dataclass itself)."""

    def __init__(self, dy, dx, flip):
        super().__init__(dy, dx)
        object.__setattr__(self, "flip", flip)

    @property
    def name(self):
        return f"flipped-shift({self.dy},{self.dx},{self.flip})"

    def on_map(self, f, input_size, fill=0.0):
        out = super().on_map(f, input_size, fill)
        return out.flip(-1) if self.flip else out


@dataclasses.dataclass(frozen=True, repr=False)
class _Roll(ef.transforms.Transform):
    shift: int = 1
    back: bool = dataclasses.field(default=False, compare=False)  # left out of ==

    @property
    def name(self):
        return f"roll({-self.shift if self.back else self.shift})"

    def on_map(self, f, input_size, fill=0.0):
        return torch.roll(f, -self.shift if self.back else self.shift, dims=-1)


@pytest.mark.parametrize("first, second", [
    (_FlippedShift(1, 1, False), _FlippedShift(1, 1, True)),
    (_Roll(1), _Roll(1, back=True)),
], ids=["subclass-state", "field-not-compared"])
def test_transforms_equal_as_dataclasses_do_not_share_cached_index_maps(first, second):
    # They compare equal (and hash alike) as dataclasses, so the second was read through the
    # cached index map of the first: 0 where the reference, and the truth, give 1.
    assert first == second
    f = torch.randn(2, 3, 6, 6)
    for t in (first, second):
        ftx = t.on_map(f, (6, 6))  # f moved exactly as t moves it: every score is 1
        for backend in ["reference"] + (["operator"] if ef.ops.available() else []):
            s = ef.functional.equivariance_scores(f, ftx, t, backend=backend)
            torch.testing.assert_close(s.channel, torch.ones(2, 3), atol=1e-5, rtol=0)
