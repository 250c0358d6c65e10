"""The one "integer >= N" check (equifast._checks) and the sites that use it."""

import numpy as np
import pytest
import torch

from equifast._checks import check_integer, is_integer


def test_check_integer_takes_python_numpy_and_torch_integers_only():
    for value in (3, np.int64(3), np.uint8(3), torch.tensor(3)):
        got = check_integer("`n`", value)
        assert got == 3 and type(got) is int  # a plain int: JSON and torch's samplers take it
    # 1 to Python, but no count; a float, even a whole one; a one-element tensor
    for bad in (True, np.True_, 2.0, np.float64(2), torch.tensor(2.0), torch.tensor([3]), "3"):
        assert not is_integer(bad)
        with pytest.raises(ValueError, match=r"Expected `n` to be an integer >= 1, but got "):
            check_integer("`n`", bad)
    assert check_integer("`w`", 0, minimum=0) == 0
    with pytest.raises(ValueError, match=r"^Expected `n` to be an integer >= 1, but got 0\.$"):
        check_integer("`n`", 0)
    with pytest.raises(ValueError, match=r"^Expected --n to be an integer >= 1, but got None\.$"):
        check_integer("--n", None)
    assert check_integer("`n`", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"^Expected `n` to be an integer >= 1 \(or None: all\), "
                                         r"but got -1\.$"):
        check_integer("`n`", -1, allow_none=True, none_means="all")


def test_data_checks_take_numpy_integers_and_pass_ints_on():
    from equifast.data import EmbeddedPhotos, batches, check_num_workers

    # num_workers took only int; batches handed a numpy batch_size to torch's DataLoader, which
    # refused it ("should be a positive integer value, but got batch_size=2")
    assert check_num_workers(np.int64(2)) == 2
    photos = EmbeddedPhotos(np.int64(3), size=np.int64(16))
    assert [x.shape[0] for x, _ in batches(photos, batch_size=np.int64(2))] == [2, 1]
    assert [x.shape[0] for x, _ in batches(photos, batch_size=2, n_images=np.int64(2))] == [2]
    for bad in (-1, 1.0, True):
        with pytest.raises(ValueError, match=r"`num_workers` to be an integer >= 0"):
            check_num_workers(bad)


def test_spec_numbers_take_numpy_integers_and_refuse_floats():
    from distributed.spec import SpecError, validate_spec

    raw = {"models": [{"name": "resnet18", "weights": "none", "num_classes": 2}],
           "datasets": [{"kind": "random", "image_size": 32}],
           "transforms": {"rotation": "rotation:90"}}
    spec = validate_spec({**raw, "n_images": np.int64(4), "batch_size": np.int64(2),
                          "seeds": [np.int64(1), 2]})
    assert (spec.n_images, spec.batch_size, spec.seeds) == (4, 2, [1, 2])
    assert type(spec.n_images) is int and all(type(s) is int for s in spec.seeds)
    with pytest.raises(SpecError) as err:  # 2.0 was taken as 2
        validate_spec({**raw, "batch_size": 2.0, "n_images": True})
    assert "batch_size: Expected an integer >= 1, but got 2.0." in str(err.value)
    assert "n_images: Expected an integer >= 1 or null, but got True." in str(err.value)
