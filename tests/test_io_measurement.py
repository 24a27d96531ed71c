"""recon.io.measurement: a user's measurement and geometry flags as (y, operator), checked before any work."""

import h5py
import numpy as np
import pytest
import torch

from recon.io.measurement import prepare, read_measurement, split_dataset


def _image(size=16):
    image = np.zeros((size, size), np.float32)
    image[4:12, 5:10] = 1.0
    return image


def _kspace(size=16, columns=None):
    image = _image(size)
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    if columns is not None:
        kspace[:, ~columns] = 0
    return kspace.astype(np.complex64)


def test_a_plain_2d_sinogram_gets_its_channel_axis_and_the_geometry_from_its_shape():
    y, physics = prepare(np.ones((20, 46), np.float32), "ct", size=32)
    assert y.shape == (1, 20, 46)
    assert physics.n_angles == 20 and physics.n_detectors == 46 and tuple(physics.measurement_shape) == (1, 20, 46)


def test_angles_in_degrees_are_converted_and_counted(tmp_path):
    (tmp_path / "angles.txt").write_text("\n".join(str(a) for a in np.linspace(0, 170, 18)))
    _, physics = prepare(np.ones((18, 46)), "ct", size=32, angles=tmp_path / "angles.txt", degrees=True)
    np.testing.assert_allclose(physics.angles, np.deg2rad(np.linspace(0, 170, 18)))
    with pytest.raises(ValueError, match="--degrees"):
        prepare(np.ones((18, 46)), "ct", size=32, angles=tmp_path / "angles.txt")
    with pytest.raises(ValueError, match="18 angles given but the sinogram has 20"):
        prepare(np.ones((20, 46)), "ct", size=32, angles=tmp_path / "angles.txt", degrees=True)


def test_complex_kspace_becomes_two_real_channels_with_the_mask_of_its_measured_columns():
    columns = np.zeros(16, bool)
    columns[[0, 3, 6, 7, 8, 9, 12]] = True
    kspace = _kspace(columns=columns)
    y, physics = prepare(kspace, "mri")
    assert y.shape == (2, 16, 16)
    np.testing.assert_array_equal(y[0] + 1j * y[1], kspace)
    np.testing.assert_array_equal(physics.mask.numpy().max(axis=0) > 0, columns)
    # the operator's FFT is the user's (fastMRI's centred orthonormal one): it predicts the data exactly
    np.testing.assert_allclose(physics.A(torch.from_numpy(_image())[None, None])[0].numpy(), y, atol=1e-5)


def test_a_given_mask_undersamples_fully_sampled_kspace_retrospectively(tmp_path):
    mask = np.zeros(16, np.float32)
    mask[6:10] = 1
    np.save(tmp_path / "mask.npy", mask)
    y, _ = prepare(_kspace(), "mri", mask=tmp_path / "mask.npy")
    assert np.abs(y[..., mask == 0]).max() == 0 and np.abs(y[..., mask == 1]).max() > 0
    with pytest.raises(ValueError, match="fully sampled"):
        prepare(_kspace(), "mri")
    with pytest.raises(ValueError, match=r"expected \(16, 16\) or \(16,\)"):
        prepare(_kspace(), "mri", mask=np.ones(12))


@pytest.mark.parametrize("y, operator, flags, match", [
    (np.ones((20, 46)), "ct", {"size": 32, "acceleration": 4}, "--acceleration do"),
    (np.ones((20, 46)), "ct", {"size": 32, "source_distance": 90.0}, "--source-distance"),
    (np.ones((20, 46)), "ct", {}, "--size"),
    (np.ones((20, 46)), "ct", {"size": 32, "n_angles": 30}, "20 angles"),
    (np.ones((20, 46), complex), "ct", {"size": 32}, "complex"),
    (np.ones((4, 16, 16), complex), "mri", {}, "multi-coil"),
    (np.ones((16, 16)), "mri", {}, r"\(2, H, W\)"),
    (np.ones((8, 8)), "xray", {}, "operator must be one of"),
])
def test_settings_that_do_not_fit_the_measurement_or_the_operator_are_refused(y, operator, flags, match):
    with pytest.raises(ValueError, match=match):
        prepare(y, operator, **flags)


def test_h5_datasets_are_named_after_a_colon(tmp_path):
    path = tmp_path / "scan.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("group/sino", data=np.arange(6.0).reshape(2, 3))
    assert split_dataset(f"{path}:/group/sino") == (str(path), "/group/sino")
    np.testing.assert_array_equal(read_measurement(f"{path}:/group/sino"), np.arange(6.0).reshape(2, 3))
    with pytest.raises(ValueError, match="its datasets: \\['group/sino'\\]"):
        read_measurement(path)


def test_a_multi_slice_image_file_is_not_one_measurement(tmp_path):
    np.save(tmp_path / "two.npy", np.zeros((2, 8, 8)))
    (tmp_path / "sino.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"a measurement is a .npy file, an HDF5 dataset .*got '.txt'"):
        read_measurement(tmp_path / "sino.txt")
    np.savez(tmp_path / "sino.npz", y=np.zeros((8, 8)))
    with pytest.raises(ValueError, match="save one array of an .npz with np.save"):
        read_measurement(tmp_path / "sino.npz")


def test_fan_beam_takes_the_scanner_distances_and_needs_both():
    _, physics = prepare(np.ones((36, 60)), "fan_beam_ct", size=32, source_distance=64.0, detector_distance=32.0)
    assert type(physics).__name__ == "FanBeamCT" and physics.source_distance == 64.0 and physics.n_detectors == 60
    with pytest.raises(ValueError, match="detector_distance"):
        prepare(np.ones((36, 60)), "fan", size=32, source_distance=64.0)


def test_a_text_mask_keeps_its_rows(tmp_path):
    mask = np.zeros((16, 16), int)
    mask[:, 6:10] = 1
    np.savetxt(tmp_path / "mask.txt", mask, fmt="%d", delimiter=",")
    _, physics = prepare(_kspace(), "mri", mask=tmp_path / "mask.txt")
    np.testing.assert_array_equal(physics.mask.numpy(), mask)
    (tmp_path / "ragged.txt").write_text("1 0 1\n1 0\n")
    with pytest.raises(ValueError, match="different numbers"):
        prepare(_kspace(), "mri", mask=tmp_path / "ragged.txt")


def test_a_file_named_npy_that_is_not_one_says_so(tmp_path):
    from recon.io.measurement import read_vector

    path = tmp_path / "sinogram.npy"
    path.write_text("0.1 0.2\n0.3 0.4\n")
    with pytest.raises(ValueError, match="sinogram.npy: not a NumPy .npy file"):
        read_measurement(path)
    with pytest.raises(ValueError, match="the angles file: cannot read .*not a NumPy .npy file"):
        read_vector(path, "angles")


def test_a_mask_that_is_not_the_undersampled_datas_own_is_refused(tmp_path):
    """The right mask in FFT order, or --acceleration on data undersampled already: measured columns were zeroed
    and empty ones taken as measured zeros, under a warning about retrospective undersampling."""
    columns = np.zeros(16, bool)
    columns[[1, 4, 6, 7, 8, 9, 13]] = True
    kspace = _kspace(columns=columns)
    np.save(tmp_path / "shifted.npy", np.fft.ifftshift(columns).astype(np.float32))
    with pytest.raises(ValueError, match=r"samples \d+ k-space column\(s\) that hold no data .*leaves out \d+ that "
                                         r"do.*fftshift"):
        prepare(kspace, "mri", mask=tmp_path / "shifted.npy")
    with pytest.raises(ValueError, match="hold no data"):
        prepare(kspace, "mri", acceleration=2)
    y, physics = prepare(kspace, "mri", mask=columns.astype(np.float32))  # its own mask
    np.testing.assert_array_equal(y[0] + 1j * y[1], kspace)
    fewer = columns & (np.arange(16) != 13)  # a subset of the measured columns: retrospective, allowed
    y, _ = prepare(kspace, "mri", mask=fewer.astype(np.float32))
    assert np.abs(y[..., 13]).max() == 0


def test_retrospective_masks_may_sample_the_zero_padding_of_fully_sampled_kspace():
    """fastMRI's fully sampled k-space has empty columns at its edges; a generated mask that samples them is fine."""
    kspace = _kspace(columns=np.arange(16) >= 2)
    y, physics = prepare(kspace, "mri", mask=np.ones(16, np.float32))
    np.testing.assert_array_equal(y[0] + 1j * y[1], kspace)


def test_a_mask_comes_from_an_hdf5_dataset_and_is_given_once(tmp_path):
    columns = np.zeros(16, bool)
    columns[5:11] = True
    with h5py.File(tmp_path / "study.h5", "w") as f:
        f["mask"] = columns.astype(np.float32)
        f["other"] = columns.astype(np.float32)
    for spec in (tmp_path / "study.h5", f"{tmp_path / 'study.h5'}:/other"):
        _, physics = prepare(_kspace(), "mri", mask=spec)
        np.testing.assert_array_equal(physics.mask.numpy().max(axis=0) > 0, columns)
    with pytest.raises(ValueError, match="--mask gives the sampling mask; --acceleration"):
        prepare(_kspace(), "mri", mask=columns.astype(np.float32), acceleration=4)


def test_kspace_undersampled_along_rows_without_a_mask_says_so():
    image = np.random.default_rng(0).random((16, 16))
    kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))
    kspace[::2] = 0
    with pytest.raises(ValueError, match="fully sampled.*only 8 of its 16 rows hold data.*transpose"):
        prepare(kspace, "mri")


def test_degrees_applies_to_an_angles_file_and_a_span_in_radians_is_named(tmp_path):
    (tmp_path / "radians.txt").write_text("\n".join(str(a) for a in np.linspace(0, np.pi, 18, endpoint=False)))
    with pytest.raises(ValueError, match="span only 2.97 degrees: are they in radians"):
        prepare(np.ones((18, 46)), "ct", size=32, angles=tmp_path / "radians.txt", degrees=True)
    with pytest.raises(ValueError, match="without one the angles are even"):
        prepare(np.ones((18, 46)), "ct", size=32, degrees=True)
    with pytest.raises(ValueError, match="--degrees do"):
        prepare(_kspace(), "mri", degrees=True)


def test_an_rgb_low_resolution_image_is_refused_not_read_as_channels():
    with pytest.raises(ValueError, match="RGB picture"):
        prepare(np.zeros((16, 16, 3), np.float32), "sr")


def test_a_detector_narrower_than_the_image_warns_of_a_transposed_sinogram(caplog):
    """skimage's radon returns (detectors, angles): read as (angles, detectors), a 48-bin detector became 30 wide."""
    prepare(np.ones((48, 30), np.float32), "ct", size=48)
    assert "cover 30 of the image's 48 pixels" in caplog.text and "transpose it to (angles, detectors) = (30, 48)" \
        in caplog.text
    caplog.clear()
    prepare(np.ones((30, 68), np.float32), "ct", size=48)
    assert "cover" not in caplog.text


def test_uncentred_kspace_gets_a_warning(caplog):
    image = _image()
    prepare(np.fft.fft2(image, norm="ortho").astype(np.complex64), "mri", acceleration=2)
    assert "a corner: is it a plain fft2" in caplog.text
    caplog.clear()
    prepare(_kspace(), "mri", acceleration=2)
    assert "plain fft2" not in caplog.text
