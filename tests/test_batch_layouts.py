"""Batch input layouts on small files written here: native CT and MRI, fastMRI single- and multi-coil,
LoDoPaB-CT with ground truth; and inputs that are corrupt, truncated or incomplete."""

import logging
import math
import re

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from recon.batch import run
from recon.batch.sensitivity import centered_ifft2
from recon.cli import app
from recon.demo import example_images, write_native_ct


def _fft2c(image):
    shifted = np.fft.ifftshift(image, axes=(-2, -1))
    return np.fft.fftshift(np.fft.fft2(shifted, axes=(-2, -1), norm="ortho"), axes=(-2, -1))


def _read(path):
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


@pytest.fixture(scope="module")
def ct_images():
    return example_images(3, 64)[0]


def test_native_ct_outputs_layout_scores_and_metadata(tmp_path, ct_images):
    data = write_native_ct(str(tmp_path / "study.h5"), ct_images, n_angles=60, noise=0.0)
    summary = run([data], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok and summary.done == 3
    arrays, attrs = _read(tmp_path / "out" / "study.h5")
    assert arrays["mean"].shape == (3, 1, 64, 64) and arrays["std"].shape == (3, 1, 64, 64)
    assert [s.decode() for s in arrays["status"]] == ["done"] * 3
    assert np.all(arrays["psnr"] > 24)  # noiseless 60-view FBP of 64 px images
    assert np.all((arrays["ssim"] > 0.5) & (arrays["ssim"] <= 1))
    with h5py.File(tmp_path / "out" / "study.h5", "r") as f:
        assert f["mean"].chunks == (1, 1, 64, 64) and f["mean"].compression == "gzip"
        from recon.result import read_metadata

        metadata = read_metadata(f)
    assert metadata["settings"]["method"] == "fbp" and metadata["kind"] == "batch"
    assert attrs["version"] and '"method": "fbp"' in attrs["settings"]
    assert not (tmp_path / "out" / "study.parts").exists()  # shards are gone once all slices are done
    log = (tmp_path / "out" / "recon-batch.log").read_text()
    assert len(re.findall(r"study slice \d done in", log)) == 3


def test_native_mri_single_coil_with_mask(tmp_path, ct_images):
    images = ct_images[:2]
    mask = np.zeros(64, dtype=np.float32)
    mask[::2] = 1
    mask[28:36] = 1
    kspace = _fft2c(images) * mask
    with h5py.File(tmp_path / "mri.h5", "w") as f:
        f["measurement"] = kspace.astype(np.complex64)
        f["ground_truth"] = images
        f["mask"] = mask
        f.attrs.update(operator="cartesian_mri", image_size=[64, 64])
    summary = run([tmp_path / "mri.h5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok
    arrays, _ = _read(tmp_path / "out" / "mri.h5")
    zero_filled = np.real(centered_ifft2(kspace))
    np.testing.assert_allclose(arrays["mean"][:, 0], zero_filled, atol=1e-4)  # the operator's adjoint, real part
    assert np.all(arrays["psnr"] > 15)


def _header(encoded, recon):
    return (
        '<?xml version="1.0"?><ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding>'
        f"<encodedSpace><matrixSize><x>{encoded[0]}</x><y>{encoded[1]}</y><z>1</z></matrixSize></encodedSpace>"
        f"<reconSpace><matrixSize><x>{recon[0]}</x><y>{recon[1]}</y><z>1</z></matrixSize></reconSpace>"
        "</encoding></ismrmrdHeader>"
    ).encode()


def _complex_images(n, height, width):
    base = example_images(n, max(height, width))[0][:, :height, :width]
    yy, xx = np.mgrid[:height, :width] / max(height, width)
    return base * np.exp(1j * 0.8 * (xx - yy))  # smooth phase, as in real scans


def _center(image, size):
    h, w = image.shape[-2:]
    return image[..., (h - size[0]) // 2:(h - size[0]) // 2 + size[0], (w - size[1]) // 2:(w - size[1]) // 2 + size[1]]


def _coil_maps(n_coils, height, width):
    yy, xx = np.mgrid[:height, :width]
    maps = []
    for c in range(n_coils):
        angle = 2 * math.pi * c / n_coils
        cy, cx = height / 2 + height * 0.6 * math.sin(angle), width / 2 + width * 0.6 * math.cos(angle)
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (0.6 * height) ** 2)) * np.exp(1j * angle))
    return np.stack(maps)


def _write_fastmri(path, kspace, target_name, target, columns, recon=(32, 32)):
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace.astype(np.complex64)
        f["mask"] = columns.astype(np.float32)
        f[target_name] = target.astype(np.float32)
        f["ismrmrd_header"] = _header(kspace.shape[-2:], recon)
        f.attrs.update(acceleration=4, num_low_frequency=8)


def _columns(width, acceleration=4, n_low=8):
    columns = np.zeros(width, dtype=bool)
    columns[::acceleration] = True
    columns[(width - n_low + 1) // 2:(width - n_low + 1) // 2 + n_low] = True
    return columns


def test_fastmri_single_coil_magnitude_cropped_to_recon_space(tmp_path):
    images = _complex_images(2, 64, 48)
    full = _fft2c(images)
    columns = _columns(48)
    target = np.abs(_center(images, (32, 32)))
    _write_fastmri(tmp_path / "file1000.h5", full * columns, "reconstruction_esc", target, columns)
    summary = run([tmp_path / "file1000.h5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok
    arrays, attrs = _read(tmp_path / "out" / "file1000.h5")
    assert arrays["mean"].shape == (2, 1, 32, 32)  # reconSpace, one magnitude channel
    expected = np.abs(_center(centered_ifft2(full * columns), (32, 32)))
    np.testing.assert_allclose(arrays["mean"][:, 0], expected, atol=1e-4)
    assert np.all(arrays["psnr"] > 18)


def test_fastmri_multicoil_sense_with_estimated_maps_matches_rss(tmp_path):
    images = _complex_images(1, 64, 48)
    coil_images = _coil_maps(6, 64, 48)[None] * images[:, None]
    full = _fft2c(coil_images)
    rss = np.sqrt((np.abs(coil_images) ** 2).sum(axis=1))
    target = _center(rss, (32, 32))
    # fully sampled: the SENSE combination with estimated maps must reproduce the RSS image
    _write_fastmri(tmp_path / "full.h5", full, "reconstruction_rss", target, np.ones(48, dtype=bool))
    # 4x undersampled: the zero-filled SENSE image is worse, but still an image of the object
    columns = _columns(48)
    _write_fastmri(tmp_path / "under.h5", full * columns[None, None], "reconstruction_rss", target, columns)
    summary = run([tmp_path / "full.h5", tmp_path / "under.h5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok
    full_psnr = _read(tmp_path / "out" / "full.h5")[0]["psnr"]
    under_psnr = _read(tmp_path / "out" / "under.h5")[0]["psnr"]
    assert full_psnr[0] > 30, full_psnr
    assert 12 < under_psnr[0] < full_psnr[0]


def _lodopab_phantom():
    """Off-centre discs, analytic sinogram in LoDoPaB's (ODL) geometry and units, rasterised truth."""
    from recon.batch.lodopab import DOMAIN_HALF_WIDTH, IMAGE_SIZE, N_DETECTORS, angles

    discs = [(0.0, 0.0, 0.09, 0.3), (0.04, -0.02, 0.02, 0.5), (-0.05, 0.05, 0.015, 0.7)]  # x, y, r (m), value
    phi = angles()
    rho = DOMAIN_HALF_WIDTH * math.sqrt(2)
    s = -rho + (np.arange(N_DETECTORS) + 0.5) * 2 * rho / N_DETECTORS
    sinogram = np.zeros((len(phi), N_DETECTORS))
    for x, y, r, value in discs:  # ODL: detector coordinate s = x cos(phi) + y sin(phi)
        d = s[None, :] - (x * np.cos(phi) + y * np.sin(phi))[:, None]
        sinogram += 2 * value * np.sqrt(np.clip(r * r - d * d, 0, None))
    sub = 3
    pixel = 2 * DOMAIN_HALF_WIDTH / IMAGE_SIZE
    grid = -DOMAIN_HALF_WIDTH + (np.arange(IMAGE_SIZE * sub) + 0.5) * pixel / sub
    gx, gy = np.meshgrid(grid, grid, indexing="ij")  # ODL: array axis 0 is x
    image = sum(value * ((gx - x) ** 2 + (gy - y) ** 2 <= r * r) for x, y, r, value in discs)
    truth = image.reshape(IMAGE_SIZE, sub, IMAGE_SIZE, sub).mean(axis=(1, 3))
    return sinogram.astype(np.float32), truth.astype(np.float32)


def test_lodopab_geometry_units_and_orientation_match_ground_truth(tmp_path):
    sinogram, truth = _lodopab_phantom()
    with h5py.File(tmp_path / "observation_test_000.hdf5", "w") as f:
        f["data"] = sinogram[None]
    with h5py.File(tmp_path / "ground_truth_test_000.hdf5", "w") as f:
        f["data"] = truth[None]
    summary = run([tmp_path / "observation_test_000.hdf5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok
    arrays, _ = _read(tmp_path / "out" / "observation_test_000.h5")
    assert arrays["mean"].shape == (1, 1, 362, 362)
    # right units and orientation: ~40 dB; a quarter turn or a flip would give ~14 dB
    assert arrays["psnr"][0] > 35, arrays["psnr"]
    assert arrays["ssim"][0] > 0.9


def test_a_lodopab_ground_truth_that_appears_or_changes_makes_the_output_another_runs(tmp_path):
    """The ground truth was not part of the output's record: slices done without it stayed unscored
    (NaN PSNR) once it appeared, and a corrected one was mixed in without a word."""
    sinogram, truth = _lodopab_phantom()
    observation, ground_truth = tmp_path / "observation_test_001.hdf5", tmp_path / "ground_truth_test_001.hdf5"
    with h5py.File(observation, "w") as f:
        f["data"] = sinogram[None]
    assert run([observation], tmp_path / "out", method="fbp", progress=False).ok  # no ground truth yet
    with h5py.File(ground_truth, "w") as f:
        f["data"] = truth[None]
    with pytest.raises(ValueError, match="its ground truth file appeared"):
        run([observation], tmp_path / "out", method="fbp", progress=False)
    assert run([observation], tmp_path / "scored", method="fbp", progress=False).ok
    with h5py.File(ground_truth, "r+") as f:
        f["data"][0, 100:110, 100:110] = 0.5
    with pytest.raises(ValueError, match="its ground truth file changed"):
        run([observation], tmp_path / "scored", method="fbp", progress=False)


# ----------------------------------------------------------------------------- bad inputs
def test_truncated_and_garbage_files_are_refused_before_work(tmp_path, ct_images):
    good = write_native_ct(str(tmp_path / "good.h5"), ct_images, n_angles=20)
    data = open(good, "rb").read()
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.h5").write_bytes(b"not an hdf5 file at all" * 10)
    for name in ("truncated.h5", "garbage.h5"):
        with pytest.raises(ValueError, match="not a readable HDF5 file"):
            run([good, tmp_path / name], tmp_path / "out", method="fbp", progress=False)
    with pytest.raises(ValueError, match="does not exist"):
        run([tmp_path / "missing.h5"], tmp_path / "out", method="fbp", progress=False)
    assert not (tmp_path / "out" / "good.h5").exists()  # nothing ran: every input is checked first


def test_a_slice_with_nan_in_its_ground_truth_fails_before_its_work_and_the_others_go_on(tmp_path, ct_images):
    """It was reconstructed and counted as done, with NaN scores and no word."""
    path = write_native_ct(str(tmp_path / "ct.h5"), ct_images, n_angles=20)
    with h5py.File(path, "a") as f:
        truth = f["ground_truth"][()]
        truth[1, ..., 3, 4] = np.nan
        f["ground_truth"][...] = truth
    summary = run([path], tmp_path / "out", method="fbp", progress=False)
    assert summary.done == len(ct_images) - 1
    assert [(index, "ground truth has 1 NaN" in error) for _, index, error in summary.failures] == [(1, True)]


def test_a_folder_given_as_input_is_named_as_a_folder(tmp_path, ct_images):
    """It was refused as "does not exist", which sent a user looking for a typo."""
    (tmp_path / "studies").mkdir()
    write_native_ct(str(tmp_path / "studies" / "a.h5"), ct_images, n_angles=20)
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "studies"), "--out", str(tmp_path / "out"),
                                      "--method", "fbp"])
    assert result.exit_code == 2, result.output
    assert "is a folder" in result.output and "1 .h5/.hdf5 file(s)" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_missing_datasets_and_attributes_are_named(tmp_path, ct_images):
    write_native_ct(str(tmp_path / "a.h5"), ct_images, n_angles=20)
    with h5py.File(tmp_path / "a.h5", "a") as f:
        del f.attrs["operator"]
    with pytest.raises(ValueError, match="'operator' attribute"):
        run([tmp_path / "a.h5"], tmp_path / "out", method="fbp", format="native", progress=False)
    # the setting fills what the file lacks
    assert run([tmp_path / "a.h5"], tmp_path / "out", method="fbp", operator="parallel_beam_ct", progress=False).ok

    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["something_else"] = np.zeros(3)
    with pytest.raises(ValueError, match="'measurement' dataset"):
        run([tmp_path / "b.h5"], tmp_path / "out", method="fbp", progress=False)
    with pytest.raises(ValueError, match="no 'measurement' dataset"):
        run([tmp_path / "b.h5"], tmp_path / "out", method="fbp", format="native", progress=False)

    write_native_ct(str(tmp_path / "c.h5"), ct_images, n_angles=20)
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f.attrs["n_angles"] = 30
    with pytest.raises(ValueError, match="n_angles=30 but 'measurement' has 20"):
        run([tmp_path / "c.h5"], tmp_path / "out", method="fbp", progress=False)

    images = _complex_images(1, 64, 48)
    with h5py.File(tmp_path / "nohdr.h5", "w") as f:
        f["kspace"] = _fft2c(images).astype(np.complex64)
        f["mask"] = np.ones(48, dtype=np.float32)
    with pytest.raises(ValueError, match="'ismrmrd_header'"):
        run([tmp_path / "nohdr.h5"], tmp_path / "out", method="fbp", progress=False)
    with h5py.File(tmp_path / "full.h5", "w") as f:
        f["kspace"] = _fft2c(images).astype(np.complex64)
        f["ismrmrd_header"] = _header((64, 48), (32, 32))
    with pytest.raises(ValueError, match="--acceleration"):
        run([tmp_path / "full.h5"], tmp_path / "out", method="fbp", progress=False)
    # retrospective undersampling of a fully sampled file
    assert run([tmp_path / "full.h5"], tmp_path / "out", method="fbp", acceleration=4, progress=False).ok

    with h5py.File(tmp_path / "observation_x.hdf5", "w") as f:
        f["data"] = np.zeros((1, 1000, 513), dtype=np.float32)
    with h5py.File(tmp_path / "ground_truth_x.hdf5", "w") as f:
        f["data"] = np.zeros((1, 100, 100), dtype=np.float32)
    with pytest.raises(ValueError, match="ground truth .* has shape"):
        run([tmp_path / "observation_x.hdf5"], tmp_path / "out", method="fbp", progress=False)


def test_ccdf_batch_beats_fbp_and_records_prior_and_samples(tmp_path):
    images = example_images(2, 64)[0]
    data = write_native_ct(str(tmp_path / "ct.h5"), images, n_angles=30, noise=0.01)
    assert run([data], tmp_path / "fbp", method="fbp", progress=False).ok
    summary = run([data], tmp_path / "ccdf", method="ccdf", steps=8, samples=2, save_samples=True, progress=False)
    assert summary.ok, summary.failures
    fbp, _ = _read(tmp_path / "fbp" / "ct.h5")
    ccdf, attrs = _read(tmp_path / "ccdf" / "ct.h5")
    assert np.all(ccdf["psnr"] > fbp["psnr"] + 3), (ccdf["psnr"], fbp["psnr"])
    assert ccdf["samples"].shape == (2, 2, 1, 64, 64) and np.all(ccdf["std"].mean(axis=(1, 2, 3)) > 0)
    assert np.all(ccdf["n_network_evals"] > 0)
    assert attrs["prior_name"] and len(attrs["prior_checksum"]) == 64  # sha256 of the weights


def test_ground_truth_of_the_wrong_size_is_refused_before_work(tmp_path, ct_images):
    write_native_ct(str(tmp_path / "ct.h5"), ct_images, n_angles=20)
    with h5py.File(tmp_path / "ct.h5", "a") as f:
        truth = f["ground_truth"][()]
        del f["ground_truth"]
        f["ground_truth"] = truth[:, :-8, :-8]
    with pytest.raises(ValueError, match="'ground_truth'.*image_size"):
        run([tmp_path / "ct.h5"], tmp_path / "out", method="fbp", progress=False)
    assert not (tmp_path / "out" / "ct.h5").exists()


def test_scalar_image_size_means_a_square_image(tmp_path, ct_images):
    write_native_ct(str(tmp_path / "ct.h5"), ct_images, n_angles=20)
    with h5py.File(tmp_path / "ct.h5", "a") as f:
        f.attrs["image_size"] = ct_images.shape[-1]
    summary = run([tmp_path / "ct.h5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok, summary.failures
    arrays, _ = _read(tmp_path / "out" / "ct.h5")
    assert arrays["mean"].shape == (len(ct_images), 1, *ct_images.shape[-2:])


def test_fastmri_image_narrower_than_recon_space_is_cropped_square_like_fastmri(tmp_path):
    images = _complex_images(2, 64, 24)  # width 24 < reconSpace 32 (fastMRI's "FLAIR 203" files)
    full = _fft2c(images)
    columns = _columns(24, n_low=6)
    target = np.zeros((2, 32, 32))
    target[:, :, 4:28] = np.abs(_center(images, (32, 24)))  # the target as stored: reconSpace-sized
    _write_fastmri(tmp_path / "file_brain_AXFLAIR.h5", full * columns, "reconstruction_esc", target, columns)
    summary = run([tmp_path / "file_brain_AXFLAIR.h5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok, summary.failures
    arrays, _ = _read(tmp_path / "out" / "file_brain_AXFLAIR.h5")
    assert arrays["mean"].shape == (2, 1, 24, 24)  # fastMRI: crop (W, W) when W < reconSpace width
    expected = np.abs(_center(centered_ifft2(full * columns), (24, 24)))
    np.testing.assert_allclose(arrays["mean"][:, 0], expected, atol=1e-4)
    assert np.all(np.isfinite(arrays["psnr"]))


def test_fastmri_image_shorter_than_recon_space_is_cropped_and_scored_at_its_own_height(tmp_path):
    """A reconSpace taller than the image: the reconstruction can only be cropped to the image's height,
    and the target is cropped to the same size (it failed to score every slice)."""
    images = _complex_images(2, 24, 48)  # height 24 < reconSpace 32
    full = _fft2c(images)
    columns = _columns(48)
    target = np.zeros((2, 32, 32))
    target[:, 4:28] = np.abs(_center(images, (24, 32)))  # the target as stored: reconSpace-sized
    _write_fastmri(tmp_path / "fm.h5", full * columns, "reconstruction_esc", target, columns)
    summary = run([tmp_path / "fm.h5"], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok, summary.failures
    arrays, _ = _read(tmp_path / "out" / "fm.h5")
    assert arrays["mean"].shape == (2, 1, 24, 32)
    np.testing.assert_allclose(arrays["mean"][:, 0], np.abs(_center(centered_ifft2(full * columns), (24, 32))), atol=1e-4)
    assert np.all(arrays["psnr"] > 15)


# ------------------------------------------------------------------ odd files fail for the file, before work
def _replace(name, value):
    def mutate(f):
        del f[name]
        if isinstance(value, str) and value == "group":
            f.create_group(name)
        else:
            f[name] = value
    return mutate


def _set_attr(**attrs):
    return lambda f: f.attrs.update(attrs)


def _add(name, value):
    def mutate(f):
        f[name] = value
    return mutate


def _complex_measurement(f):
    values = f["measurement"][()]
    del f["measurement"]
    f["measurement"] = values.astype(np.complex64)


@pytest.mark.parametrize("mutate, message", [
    # 5: scalars and groups where arrays belong, complex CT data
    (_replace("measurement", 3.0), "'measurement' should have"),
    (_replace("measurement", "group"), "'measurement' should be a dataset"),
    (_replace("measurement", np.array([b"a", b"b"])), "'measurement' should have"),
    (_replace("ground_truth", 1.0), "'ground_truth' should have"),
    (_replace("ground_truth", "group"), "'ground_truth' should be a dataset"),
    (_replace("ground_truth", np.zeros((2, 32, 32), dtype=bool)), "'ground_truth' should hold numbers"),
    (_replace("ground_truth", np.zeros((2, 3, 32, 32))), "'ground_truth'.* 3 channels"),  # failed after the work
    (_complex_measurement, "complex"),
    # 6: operator attributes, validated for the file instead of failing every slice
    (_set_attr(image_size=[0, 32]), "image_size"),
    (_set_attr(image_size="abc"), "image_size"),
    (_set_attr(noise_sigma=np.nan), "noise_sigma"),
    (_set_attr(noise_sigma=-1.0), "noise_sigma"),
    (_set_attr(n_angles=np.nan), "n_angles"),
    (_add("angles", np.full(20, np.nan)), "angles"),
    (_add("angles", np.zeros((20, 2))), "'angles' should have"),
    (_add("angles", np.arange(20) * 9.0), "degrees"),  # reconstructed as radians without a word
    (_set_attr(operator="fan_beam_ct", source_distance=5.0, detector_distance=32.0), "source_distance"),
    (_set_attr(operator="fan_beam_ct", source_distance=np.inf, detector_distance=32.0), "source_distance"),
    # 7: another operator's acquisition data, which was ignored without a word
    (_add("sensitivity_maps", np.ones((2, 32, 32), np.complex64)), "'sensitivity_maps', which the operator"),
    (_add("mask", np.ones(32, np.float32)), "'mask', which the operator 'parallel_beam_ct' does not use"),
])
def test_odd_native_ct_files_exit_2_naming_the_file_before_any_work(tmp_path, mutate, message):
    data = write_native_ct(str(tmp_path / "odd.h5"), example_images(2, 32)[0], n_angles=20)
    with h5py.File(data, "a") as f:
        mutate(f)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", data, "--out", str(out), "--method", "fbp"])
    assert result.exit_code == 2, result.output
    assert "odd.h5" in result.output and re.search(message, result.output), result.output
    assert "Traceback" not in result.output and not out.exists()


def _native_mri(path, **attrs):
    images = example_images(2, 32)[0]
    with h5py.File(path, "w") as f:
        f["measurement"] = _fft2c(images).astype(np.complex64)
        f.attrs.update(operator="cartesian_mri", image_size=[32, 32], **attrs)
    return path


@pytest.mark.parametrize("attrs, mask, message", [
    ({"acceleration": -4.0}, None, "acceleration"),
    ({"acceleration": 4.0, "center_fraction": np.nan}, None, "center_fraction"),
    ({}, np.full(32, 0.5, dtype=np.float32), "only 0 and 1"),
    ({"acceleration": 4.0, "complex_images": "false"}, None, "complex_images"),  # bool("false") is True
    ({"acceleration": 4.0, "mask_seed": 1.7}, None, "mask_seed"),  # int(1.7) drew seed 1's mask silently
    ({"acceleration": 4.0, "mask_seed": "3"}, None, "mask_seed"),
    ({"acceleration": 4.0, "mask_seed": np.nan}, None, "mask_seed"),
])
def test_odd_native_mri_files_exit_2_before_any_work(tmp_path, attrs, mask, message):
    data = _native_mri(str(tmp_path / "odd.h5"), **attrs)
    if mask is not None:
        with h5py.File(data, "a") as f:
            f["mask"] = mask
    result = CliRunner().invoke(app, ["batch", data, "--out", str(tmp_path / "out"), "--method", "fbp"])
    assert result.exit_code == 2 and "odd.h5" in result.output and message in result.output, result.output
    assert not (tmp_path / "out").exists()


def _native_multicoil(path, maps, coils=4):
    """Multi-coil native MRI k-space (2 slices, 32 x 32) under a 4x column mask, with ``maps`` as /sensitivity_maps."""
    images = _complex_images(2, 32, 32)
    columns = _columns(32)
    kspace = _fft2c(images[:, None] * _coil_maps(coils, 32, 32)[None]) * columns if coils else _fft2c(images) * columns
    with h5py.File(path, "w") as f:
        f["measurement"] = kspace.astype(np.complex64)
        f["mask"] = columns.astype(np.float32)
        f["sensitivity_maps"] = maps
        f.attrs.update(operator="cartesian_mri", image_size=[32, 32], complex_images=True)
    return str(path)


@pytest.mark.parametrize("maps, coils, message", [
    (_coil_maps(3, 32, 32), 4, r"shape \(3, 32, 32\), expected \(4, 32, 32\)"),  # every slice failed, on y's shape
    (np.stack([_coil_maps(3, 32, 32)] * 2), 4, r"expected \(2, 4, 32, 32\)"),
    (np.stack([_coil_maps(4, 32, 32)] * 5), 4, r"expected \(2, 4, 32, 32\)"),  # 3 maps were ignored
    (_coil_maps(4, 32, 32), None, "single-coil"),  # were ignored
])
def test_coil_maps_that_do_not_fit_the_kspace_exit_2_before_any_work(tmp_path, maps, coils, message):
    data = _native_multicoil(tmp_path / "odd.h5", maps.astype(np.complex64), coils)
    result = CliRunner().invoke(app, ["batch", data, "--out", str(tmp_path / "out"), "--method", "fbp"])
    assert result.exit_code == 2 and "odd.h5" in result.output, result.output
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_coil_maps_per_slice_that_fit_are_used(tmp_path):
    data = _native_multicoil(tmp_path / "mc.h5", np.stack([_coil_maps(4, 32, 32)] * 2).astype(np.complex64))
    summary = run([data], tmp_path / "out", method="fbp", progress=False)
    assert summary.ok, summary.failures


def test_super_resolution_factor_3_is_refused_for_the_file(tmp_path):
    with h5py.File(tmp_path / "sr.h5", "w") as f:
        f["measurement"] = np.zeros((2, 10, 10), dtype=np.float32)
        f.attrs.update(operator="super_resolution", image_size=[30, 30], factor=3)
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "sr.h5"), "--out", str(tmp_path / "out"),
                                      "--method", "fbp"])
    assert result.exit_code == 2 and "sr.h5" in result.output and "factor" in result.output, result.output


def test_fastmri_recon_space_of_zero_is_refused_for_the_file(tmp_path):
    """A reconSpace of 0 gave a reshape error on every slice."""
    images = _complex_images(2, 32, 32)
    _write_fastmri(tmp_path / "fm.h5", _fft2c(images).astype(np.complex64), "reconstruction_esc",
                   np.abs(images).astype(np.float32), _columns(32), recon=(0, 32))
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "fm.h5"), "--out", str(tmp_path / "out"),
                                      "--method", "fbp"])
    assert result.exit_code == 2 and "fm.h5" in result.output and "reconSpace" in result.output, result.output



@pytest.mark.parametrize("case, message", [
    ("small-target", r"'reconstruction_esc' has images of \(20, 20\), smaller than the \(32, 32\)"),
    ("empty-mask", "'mask' marks none of its 48 columns"),
    ("no-data", "'kspace' holds data in none of its 48 columns"),
])
def test_a_fastmri_file_with_nothing_measured_or_a_small_target_exits_2_before_any_work(tmp_path, case, message):
    """A target smaller than reconSpace failed on every slice after its reconstruction; an empty mask gave
    blank images and a successful run."""
    images = _complex_images(2, 64, 48)
    columns = np.zeros(48, dtype=bool) if case == "empty-mask" else _columns(48)
    target = np.abs(_center(images, (20, 20) if case == "small-target" else (32, 32)))
    kspace = _fft2c(images) * columns * (case != "no-data")
    _write_fastmri(tmp_path / "fm.h5", kspace, "reconstruction_esc", target, columns)
    if case == "no-data":
        with h5py.File(tmp_path / "fm.h5", "a") as f:
            del f["mask"]  # the columns come from the data, as in fastMRI's test files
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "fm.h5"), "--out", str(tmp_path / "out"),
                                      "--method", "fbp"])
    assert result.exit_code == 2 and re.search(message, result.output), result.output
    assert not (tmp_path / "out" / "fm.h5").exists()

# ------------------------------------------------------------------ fuzz: every mutated layout fails cleanly
_NASTY = [float("nan"), -1, -4.0, 0, 3, 1e12, "abc", "", [], [0, 0], [1, 2, 3, 4], True,
          "fan_beam_ct", "super_resolution", "cartesian_mri", "parallel_beam_ct"]
_ATTRS = ["operator", "image_size", "noise_sigma", "n_angles", "n_detectors", "factor", "acceleration",
          "center_fraction", "mask_pattern", "mask_seed", "source_distance", "detector_distance", "complex_images",
          "filter", "num_low_frequency"]
_DTYPES = ["int8", "uint8", "bool", "float16", "float64", "complex64", "S4"]


@pytest.fixture(scope="module")
def layout_files(tmp_path_factory):
    """A small valid file of each layout, as bytes: {layout: {file name: bytes}} (the first name is the input)."""
    folder = tmp_path_factory.mktemp("layouts")
    images = example_images(2, 32)[0]
    write_native_ct(str(folder / "ct.h5"), images, n_angles=12)
    with h5py.File(folder / "mri.h5", "w") as f:
        mask = np.zeros(32, dtype=np.float32)
        mask[::2] = 1
        f["measurement"] = (_fft2c(images) * mask).astype(np.complex64)
        f["ground_truth"] = images
        f["mask"] = mask
        f.attrs.update(operator="cartesian_mri", image_size=[32, 32], noise_sigma=0.0)
    complex_images = _complex_images(2, 32, 32)
    _write_fastmri(folder / "fastmri.h5", _fft2c(complex_images) * _columns(32), "reconstruction_esc",
                   np.abs(complex_images), _columns(32), recon=(32, 32))
    sinogram, truth = _lodopab_phantom()
    with h5py.File(folder / "observation_fuzz_000.hdf5", "w") as f:
        f["data"] = sinogram[None]
    with h5py.File(folder / "ground_truth_fuzz_000.hdf5", "w") as f:
        f["data"] = truth[None]
    groups = {"native-ct": ["ct.h5"], "native-mri": ["mri.h5"], "fastmri": ["fastmri.h5"],
              "lodopab": ["observation_fuzz_000.hdf5", "ground_truth_fuzz_000.hdf5"]}
    return {layout: {name: (folder / name).read_bytes() for name in names} for layout, names in groups.items()}


def _mutate(path, data):
    """One structural mutation of an HDF5 file, drawn by hypothesis."""
    from hypothesis import strategies as st

    with h5py.File(path, "a") as f:
        kind = data.draw(st.sampled_from(["delete", "scalar", "group", "text", "dtype", "attr-delete", "attr-set"]))
        if kind == "attr-delete" and len(f.attrs):
            del f.attrs[data.draw(st.sampled_from(sorted(f.attrs)))]
        elif kind.startswith("attr") or not len(f):
            f.attrs[data.draw(st.sampled_from(_ATTRS))] = data.draw(st.sampled_from(_NASTY))
        else:
            name = data.draw(st.sampled_from(sorted(f)))
            values = f[name][()] if isinstance(f[name], h5py.Dataset) else np.zeros(3)
            del f[name]
            if kind == "scalar":
                f[name] = 1.5
            elif kind == "group":
                f.create_group(name)
            elif kind == "text":
                f[name] = np.array([b"text"] * 3)
            elif kind == "dtype":
                dtype = data.draw(st.sampled_from(_DTYPES))
                try:
                    f[name] = np.asarray(values).astype(dtype)
                except (TypeError, ValueError):
                    f[name] = np.zeros(3, dtype=dtype)


def _flip_bytes(path, data):
    from hypothesis import strategies as st

    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
    path.write_bytes(bytes(raw))


def _snapshot(folder, out):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and out not in p.parents}


def _fuzz_body(layout_files, data):
    import signal as signals
    import tempfile
    from pathlib import Path

    from hypothesis import strategies as st

    layout = data.draw(st.sampled_from(sorted(layout_files)))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, content in layout_files[layout].items():
            (folder / name).write_bytes(content)
        names = list(layout_files[layout])
        structural, flips = data.draw(st.sampled_from([(1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]))
        for _ in range(structural):  # first: writing into a file with flipped bytes can crash libhdf5 itself
            _mutate(folder / data.draw(st.sampled_from(names)), data)
        for _ in range(flips):
            _flip_bytes(folder / data.draw(st.sampled_from(names)), data)
        source, out = folder / names[0], folder / "out"
        before = _snapshot(folder, out)

        def hung(signum, frame):
            raise AssertionError(f"recon batch hung on a mutated {layout} file")

        previous = signals.signal(signals.SIGALRM, hung)
        signals.alarm(120)
        try:
            for extra in (["--dry-run"], []):
                for handler in [h for h in logging.root.handlers if type(h) is logging.StreamHandler]:
                    logging.root.removeHandler(handler)  # bound to an earlier CliRunner's closed stderr
                result = CliRunner().invoke(app, ["batch", str(source), "--out", str(out), "--method", "fbp",
                                                  "--no-progress"] + extra)
                assert result.exception is None or isinstance(result.exception, SystemExit), (
                    f"{layout}: uncaught {type(result.exception).__name__}: {result.exception}\n{result.output}")
                assert result.exit_code in (0, 1, 2), result.output
                if result.exit_code == 2:
                    assert source.name in result.output or str(out) in result.output, result.output
                if result.exit_code == 1:
                    assert f"FAILED {source.stem} slice" in result.output, result.output
                assert "Traceback" not in result.output
        finally:
            signals.alarm(0)
            signals.signal(signals.SIGALRM, previous)
        assert _snapshot(folder, out) == before, "a file outside the output folder changed"


def test_mutated_inputs_of_every_layout_exit_0_1_or_2_with_a_message_and_touch_nothing_else(layout_files):
    """Bytes flipped, datasets deleted or replaced by scalars, groups, text or other dtypes, attributes
    removed or set to NaN, negative numbers or strings: `recon batch` (a dry run, then a real run) exits
    0, 1 or 2 naming the file, never with an uncaught exception or a hang, and changes no input."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    @settings(max_examples=40, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def fuzz(data):
        _fuzz_body(layout_files, data)

    fuzz()


def test_a_file_that_crashes_the_hdf5_library_is_refused_by_name(tmp_path, monkeypatch):
    """A damaged attribute message can segfault libhdf5, which no except clause catches: inputs are
    read once in a child process first, and a crash there names the file (exit 2)."""
    from recon.batch import layouts

    data = write_native_ct(str(tmp_path / "crashing.h5"), example_images(2, 32)[0], n_angles=12)
    monkeypatch.setattr(layouts, "_PROBE", "import os, signal; print('/measurement', flush=True); "
                                           "os.kill(os.getpid(), signal.SIGSEGV)")
    result = CliRunner().invoke(app, ["batch", data, "--out", str(tmp_path / "out"), "--method", "fbp"])
    assert result.exit_code == 2, result.output
    assert "crashing.h5" in result.output and "'/measurement' crashed the HDF5 library (SIGSEGV)" in result.output


def test_a_real_attribute_corruption_that_segfaults_libhdf5_exits_2(tmp_path):
    """One flipped byte in an attribute message of this file segfaults HDF5 2.0 when the attributes are read."""
    import subprocess
    import sys

    data = write_native_ct(str(tmp_path / "flipped.h5"), example_images(2, 32)[0], n_angles=12)
    raw = bytearray(open(data, "rb").read())
    raw[1729] ^= 0xFF
    open(data, "wb").write(bytes(raw))
    crash = subprocess.run([sys.executable, "-c", f"import h5py; dict(h5py.File({data!r}, 'r').attrs)"],
                           capture_output=True)
    if crash.returncode >= 0:
        pytest.skip("this HDF5 version does not crash on this byte (the layout differs); the mechanism is tested above")
    result = CliRunner().invoke(app, ["batch", data, "--out", str(tmp_path / "out"), "--method", "fbp"])
    assert result.exit_code == 2 and "flipped.h5" in result.output and "crashed" in result.output, result.output


def test_a_fastmri_file_60_pixels_wide_runs_through_ccdf(tmp_path):
    """Widths that are not multiples of 8 (fastMRI has 60, 372, ...) reach the diffusion methods."""
    images = _complex_images(1, 64, 60)
    full = _fft2c(images)
    columns = _columns(60)
    target = np.abs(_center(images, (60, 60)))
    _write_fastmri(tmp_path / "narrow.h5", full * columns, "reconstruction_esc", target, columns, recon=(64, 64))
    summary = run([tmp_path / "narrow.h5"], tmp_path / "out", method="ccdf", samples=2, steps=3, progress=False)
    assert summary.ok, summary.failures
    arrays, _ = _read(tmp_path / "out" / "narrow.h5")
    assert arrays["mean"].shape == (1, 1, 60, 60) and np.isfinite(arrays["mean"]).all()
    zero_filled = np.abs(_center(centered_ifft2(full * columns), (60, 60)))
    assert np.mean((arrays["mean"][0, 0] - target[0]) ** 2) < np.mean((zero_filled[0] - target[0]) ** 2)
