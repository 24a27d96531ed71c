"""The napari reader without Qt: which files it claims, and the layers it makes from them."""

import h5py
import numpy as np
import pytest

from recon.result import Result, write_attrs
from recon.viewer import reader


def _result(shape=(1, 32, 32), k=3, seed=0) -> Result:
    rng = np.random.default_rng(seed)
    samples = rng.normal(50.0, 5.0, size=(k, *shape)).astype(np.float32)
    samples[:, :, 0, :3] = 1000.0  # a few hot pixels: robust limits must ignore them
    return Result(mean=samples.mean(0), std=samples.std(0), samples=samples,
                  initial=samples[0] + 1, metadata={"method": "ccdf", "prior": "ct", "psnr": 31.5, "steps": 2})


def _write_batch(path, n=4, shape=(1, 24, 24), marker="diffrecon-result", status=True):
    rng = np.random.default_rng(1)
    mean = rng.random((n, *shape), dtype=np.float32)
    with h5py.File(path, "w") as f:
        write_attrs(f, {"method": "fbp", "prior": None})
        f.attrs["format"] = marker
        f.create_dataset("mean", data=mean)
        f.create_dataset("std", data=0.1 * mean)
        f.create_dataset("initial", data=mean + 1)
        f.create_dataset("samples", data=np.stack([mean, mean], axis=1))
        f.create_dataset("psnr", data=np.linspace(20, 23, n))
        if status:
            f.create_dataset("status", data=np.array([b"done"] * (n - 1) + [b"failed"]))
    return mean


def test_reader_claims_only_our_files(tmp_path):
    ours = _result().save(tmp_path / "ours.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("mean", data=np.zeros((4, 4)))
        f.create_dataset("std", data=np.zeros((4, 4)))
    not_hdf5 = tmp_path / "text.h5"
    not_hdf5.write_text("not an HDF5 file")
    other_ext = tmp_path / "ours.npy"
    np.save(other_ext, np.zeros(3))

    assert reader.get_reader(str(ours)) is reader.read
    assert reader.get_reader([str(ours), str(ours)]) is reader.read
    for path in (foreign, not_hdf5, other_ext, tmp_path / "missing.h5", tmp_path):
        assert reader.get_reader(str(path)) is None, path
    assert reader.get_reader([str(ours), str(foreign)]) is None


def test_result_file_opens_as_mean_std_initial_samples(tmp_path):
    result = _result()
    path = result.save(tmp_path / "slice.h5")
    layers = reader.get_reader(path)(path)
    by_name = {kwargs["name"]: (data, kwargs, kind) for data, kwargs, kind in layers}
    assert list(by_name) == ["slice mean", "slice uncertainty (std)", "slice initial", "slice samples"]
    assert all(kind == "image" for _, _, kind in layers)

    mean, kw_mean, _ = by_name["slice mean"]
    std, kw_std, _ = by_name["slice uncertainty (std)"]
    samples, kw_samples, _ = by_name["slice samples"]
    np.testing.assert_array_equal(mean, result.mean[0])  # the single channel is dropped
    np.testing.assert_array_equal(std, result.std[0])
    assert samples.shape == (3, 32, 32)
    assert kw_mean["colormap"] == "gray" and kw_std["colormap"] == "magma"
    assert kw_std["blending"] == "additive"  # outside grid mode the mean shows through the std on top of it
    assert kw_samples["visible"] is False and "visible" not in kw_mean
    # robust limits: inside the bulk of the data (about 50 +- 3 sigma), not stretched to the hot pixels
    low, high = kw_mean["contrast_limits"]
    assert 30 < low < 50 < high < 70
    assert kw_std["contrast_limits"][0] == 0.0
    meta = kw_mean["metadata"]
    assert (meta["method"], meta["prior"], meta["psnr"]) == ("ccdf", "ct", 31.5)
    assert meta["diffrecon"]["steps"] == 2 and meta["source"] == path


def test_volume_result_opens_as_stack(tmp_path):
    path = _result(shape=(1, 5, 16, 16), k=2).save(tmp_path / "volume.h5")
    mean, std = [data for data, _, _ in reader.read(path)[:2]]
    assert mean.shape == std.shape == (5, 16, 16)


def test_batch_output_opens_as_slice_stacks(tmp_path):
    path = str(tmp_path / "study.h5")
    mean = _write_batch(path)
    assert reader.file_layout(path) == "batch"
    layers = {kwargs["name"]: (data, kwargs) for data, kwargs, _ in reader.read(path)}
    np.testing.assert_array_equal(layers["study mean"][0], mean[:, 0])
    samples = layers["study samples"][0]
    # samples, slices, H, W: napari lines up trailing axes, so the slices follow the mean's slider (they
    # were (slices, samples, H, W), and the slider moved through samples while the mean moved through slices)
    assert samples.shape == (2, 4, 24, 24)
    np.testing.assert_array_equal(samples[1, 2], mean[2, 0])
    meta = layers["study mean"][1]["metadata"]
    assert meta["psnr"] == pytest.approx([20, 21, 22, 23])
    assert meta["diffrecon"]["status"] == ["done", "done", "done", "failed"]


@pytest.mark.parametrize("marker", ["diffrecon-batch"])
def test_batch_output_with_its_own_marker(tmp_path, marker):
    path = str(tmp_path / "marked.h5")
    _write_batch(path, marker=marker, status=False)
    assert reader.file_layout(path) == "batch"
    assert reader.read(path)[0][0].shape == (4, 24, 24)


def write_real_batch_output(folder, n=3, size=32):
    """Run ``recon.batch.run`` (fbp) on a small native-layout study; returns (output path, ground truth)."""
    from recon.batch import run
    from recon.viewer.jobs import OperatorSettings, simulate_measurement
    from recon.viewer.sample_data import shepp_logan

    truth = np.stack([shepp_logan(size) * (1 + 0.25 * i) for i in range(n)])
    sinograms = np.stack([simulate_measurement(image, OperatorSettings(n_angles=20))[0][0].numpy() for image in truth])
    study = folder / "study.h5"
    with h5py.File(study, "w") as f:
        f["measurement"], f["ground_truth"] = sinograms, truth
        f.attrs["operator"], f.attrs["image_size"] = "parallel_beam_ct", [size, size]
    summary = run([str(study)], str(folder / "out"), method="fbp", samples=1)
    assert summary.ok, summary.failures
    return summary.outputs[0], truth


def test_real_batch_output_opens_as_slice_stacks(tmp_path):
    path, truth = write_real_batch_output(tmp_path)
    assert reader.file_layout(path) == "batch"
    layers = {kwargs["name"]: (data, kwargs) for data, kwargs, _ in reader.read(path)}
    mean, kwargs = layers["study mean"]
    assert mean.shape == truth.shape == (3, 32, 32)
    assert layers["study uncertainty (std)"][1]["contrast_limits"] == (0.0, 1.0)  # fbp: zero std
    scores = kwargs["metadata"]["psnr"]
    assert len(scores) == 3 and min(scores) > 15  # per-slice PSNR against the study's ground truth
    assert kwargs["metadata"]["diffrecon"]["status"] == ["done"] * 3


def test_real_batch_output_layers_name_method_and_prior(tmp_path):
    path, _ = write_real_batch_output(tmp_path)
    for _, kwargs, _ in reader.read(path):
        assert kwargs["metadata"]["method"] == "fbp"  # from the output's settings
        assert kwargs["metadata"]["prior"] is None  # fbp uses none


def test_robust_limits_never_empty():
    assert reader.robust_limits(np.full((4, 4), 3.0)) == (1.5, 4.5)
    assert reader.robust_limits(np.zeros((4, 4)), floor_at_zero=True) == (0.0, 1.0)
    assert reader.robust_limits(np.full((4, 4), np.nan)) == (0.0, 1.0)
    low, high = reader.robust_limits(np.arange(1000.0))
    assert 0 < low < 10 and 990 < high < 999


def test_batch_output_with_no_finished_slice_says_so(tmp_path):
    from recon.batch.store import OutputStore
    from recon.batch.task import SliceOutcome

    store = OutputStore(str(tmp_path), "study", n_slices=3, fingerprint="f", metadata={"settings": {"method": "fbp"}})
    store.prepare()
    store.save(SliceOutcome("study", 1, "failed", error="ValueError: bad slice"))
    store.assemble()  # what a run writes at its start and on a kill: no slice done, no mean/std yet
    path = store.path
    assert reader.file_layout(path) == "batch"
    assert reader.get_reader(path) is reader.read  # claimed, so the user learns why rather than "no reader"
    with pytest.raises(ValueError, match=r"no slice .* finished yet \(2 pending, 1 failed of 3\).*bad slice"):
        reader.read(path)
    from recon.viewer.commands import check_files

    with pytest.raises(ValueError, match="no slice .* finished yet"):  # recon view says so before napari starts
        check_files([path])


def test_a_batch_output_of_a_study_with_a_geometry_keeps_its_voxel_spacing(tmp_path):
    """Slices 3 mm apart with 0.5 x 0.8 mm pixels showed as cubes in napari's 3-D view (and saved as 1 mm NIfTI)."""
    import nibabel

    from recon.batch import run
    from recon.io.simulate import simulate_study
    from recon.viewer.sample_data import shepp_logan
    from recon.viewer.writer import write_nifti_layer

    volume = np.stack([shepp_logan(32) * (1 + 0.2 * i) for i in range(3)])  # (slice, row, column)
    affine = np.diag([0.5, 0.8, 3.0, 1.0])  # NIfTI voxel axes (column, row, slice)
    nibabel.save(nibabel.Nifti1Image(np.transpose(volume, (2, 1, 0)), affine), tmp_path / "scan.nii")
    study = simulate_study([str(tmp_path / "scan.nii")], str(tmp_path / "study.h5"), "ct", n_angles=20)
    summary = run([study], str(tmp_path / "out"), method="fbp", samples=1)
    assert summary.ok, summary.failures
    layers = {kwargs["name"]: (data, kwargs) for data, kwargs, _ in reader.read(summary.outputs[0])}
    mean, kwargs = layers["study mean"]
    np.testing.assert_allclose(kwargs["scale"], (3.0, 0.8, 0.5))
    stack = np.zeros((3, 1, 8, 8), np.float32)  # samples shown (K, N, H, W): the sample axis keeps 1
    made = reader.result_layers("s", stack, stack, samples=np.stack([stack, stack], 1), stacked=True,
                                voxel=(3.0, 0.8, 0.5))
    assert [kwargs["scale"] for _, kwargs, _ in made] == [(3.0, 0.8, 0.5), (3.0, 0.8, 0.5), (1.0, 3.0, 0.8, 0.5)]
    written = write_nifti_layer(str(tmp_path / "mean.nii"), mean, kwargs)[0]
    np.testing.assert_allclose(nibabel.load(written).header.get_zooms(), (0.5, 0.8, 3.0))
    (tmp_path / "plain").mkdir()
    plain, _ = write_real_batch_output(tmp_path / "plain", n=2)  # a study without a geometry: no scale
    assert all("scale" not in kwargs for _, kwargs, _ in reader.read(plain))


def test_a_damaged_result_or_one_made_by_hand_wrongly_is_named_as_such(tmp_path):
    """A truncated result was "not a diffrecon result"; a group under 'mean' a TypeError; a complex mean cut to
    its real part with a ComplexWarning only."""
    from recon.viewer.commands import check_files

    _result().save(tmp_path / "whole.h5")
    data = (tmp_path / "whole.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot be read as HDF5 \\(damaged, truncated"):
        check_files([tmp_path / "cut.h5"])
    with h5py.File(tmp_path / "group.h5", "w") as f:
        write_attrs(f, {"method": "fbp"})
        f.create_group("mean")
        f["std"] = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="not a diffrecon result"):
        check_files([tmp_path / "group.h5"])
    with h5py.File(tmp_path / "complex.h5", "w") as f:
        write_attrs(f, {"method": "fbp"})
        f["mean"] = np.ones((1, 8, 8), np.complex64)
        f["std"] = np.zeros((1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="mean hold complex values"):
        reader.read(str(tmp_path / "complex.h5"))
