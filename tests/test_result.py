"""`Result.save` / `load_result`: metadata comes back equal, tuples included; old files still load."""

import json

import h5py
import numpy as np
import pytest

from recon.result import Result, load_result


def _result(metadata) -> Result:
    mean = np.ones((1, 4, 4), dtype=np.float32)
    return Result(mean=mean, std=0.1 * mean, metadata=metadata)


@pytest.mark.parametrize("missing", ["mean", "std"])
def test_a_result_without_its_mean_or_std_is_named(missing):
    arrays = {"mean": np.zeros((1, 4, 4), np.float32), "std": np.zeros((1, 4, 4), np.float32), missing: None}
    with pytest.raises(TypeError, match=f"needs a {missing}"):
        Result(**arrays)


def test_a_complex_array_is_refused_not_cast_to_its_real_part(tmp_path):
    """float32 of a complex array keeps the real part alone; a file holding one fails to load, naming it."""
    complex_mean = np.full((1, 4, 4), 1 + 2j, np.complex64)
    with pytest.raises(ValueError, match="mean is complex"):
        Result(mean=complex_mean, std=np.zeros((1, 4, 4), np.float32))
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["mean"], f["std"] = complex_mean, np.zeros((1, 4, 4), np.float32)
    with pytest.raises(ValueError, match="c.h5 is not a readable diffrecon result: .*complex"):
        load_result(tmp_path / "c.h5")


def test_a_tensor_in_metadata_is_saved_as_its_numbers_not_its_repr(tmp_path):
    import torch

    arrays = {"mean": np.zeros((1, 4, 4), np.float32), "std": np.zeros((1, 4, 4), np.float32)}
    Result(**arrays, metadata={"weights": torch.tensor([1.5, 2.0]), "count": torch.tensor(3)}).save(tmp_path / "r.h5")
    assert load_result(tmp_path / "r.h5").metadata == {"weights": [1.5, 2.0], "count": 3}  # was "tensor([1.5, 2.])"


def test_tuples_in_metadata_round_trip_as_tuples(tmp_path):
    metadata = {"image_size": (32, 32), "nested": {"crop": (1, (2, 3)), "list": [(4, 5), 6]},
                "plain": [1, 2], "empty": (), "name": "ccdf", "psnr": np.float32(31.5)}
    path = _result(metadata).save(tmp_path / "r.h5")
    loaded = load_result(path).metadata
    assert loaded == {**metadata, "psnr": 31.5}
    assert type(loaded["image_size"]) is tuple and type(loaded["nested"]["crop"][1]) is tuple
    assert type(loaded["nested"]["list"][0]) is tuple and type(loaded["plain"]) is list
    assert loaded["empty"] == ()


def test_files_written_before_the_tuple_encoding_load_lists(tmp_path):
    path = _result({}).save(tmp_path / "old.h5")
    with h5py.File(path, "r+") as f:  # as the old writer stored {"image_size": (32, 32)}
        f.attrs["metadata"] = json.dumps({"image_size": [32, 32]})
    assert load_result(path).metadata == {"image_size": [32, 32]}


def test_a_dict_that_looks_like_a_stored_tuple_is_refused_before_writing(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="__tuple__"):
        _result({"user": {"__tuple__": [1, 2]}}).save(tmp_path / "clash.h5")
    assert not (tmp_path / "clash.h5").exists()


@pytest.mark.parametrize("metadata, where", [
    ({1: "a"}, r"metadata has the key 1 \(int\)"),
    ({"scores": {0.5: 1.0}}, r"metadata\['scores'\] has the key 0\.5 \(float\)"),
    ({"steps": [{"kept": {None: 1}}]}, r"metadata\['steps'\]\[0\]\['kept'\] has the key None"),
    ({"labels": {"ct", "mri"}}, r"metadata\['labels'\] is a set"),
    ({"pair": (1, frozenset({2}))}, r"metadata\['pair'\]\[1\] is a frozenset"),
], ids=["int-key", "float-key", "nested-none-key", "set", "frozenset-in-tuple"])
def test_metadata_json_would_change_is_refused_before_writing(tmp_path, metadata, where):
    """{1: "a"} loaded back as {"1": "a"}, and a set as its text: the result did not reopen as it was saved."""
    with pytest.raises(ValueError, match=where):
        _result(metadata).save(tmp_path / "r.h5")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_save_never_writes_through_a_file_or_link_left_at_its_temporary_name(tmp_path):
    """save() used to write "<path>.tmp" with h5py's "w", truncating whatever a link there pointed to."""
    import os

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (tmp_path / "result.h5.tmp").symlink_to(precious)
    _result({"a": 1}).save(tmp_path / "result.h5")
    assert precious.read_text() == "keep me"
    assert load_result(tmp_path / "result.h5").metadata == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["precious.txt", "result.h5", "result.h5.tmp"]  # no temporary left


@pytest.mark.parametrize("damage", ["deep", "garbage", "group", "scalar", "shape"])
def test_damaged_or_hostile_result_files_raise_a_value_error_naming_the_file(tmp_path, damage):
    """Deeply nested metadata JSON raised RecursionError; odd datasets raised whatever h5py or numpy raised."""
    path = tmp_path / "r.h5"
    _result({"a": 1}).save(path)
    with h5py.File(path, "a") as f:
        if damage == "deep":
            f.attrs["metadata"] = "[" * 100_000 + "]" * 100_000
        elif damage == "garbage":
            f.attrs["metadata"] = "{not json"
        else:
            del f["std"]
            if damage == "group":
                f.create_group("std")
            else:
                f["std"] = 1.0 if damage == "scalar" else np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="r.h5"):
        load_result(path)
