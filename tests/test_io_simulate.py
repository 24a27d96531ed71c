"""recon.io.simulate: a user's images as a native study with the ground truth, ready for ``recon batch``."""

import h5py
import numpy as np
import pytest
import torch
from conftest import write_dicom_slices

from recon.io.simulate import simulate_study


def _phantom_hu(n=3, size=32):
    hu = np.full((n, size, size), -1000.0)
    hu[:, 6:26, 6:26] = 40.0  # soft tissue
    for k in range(n):
        hu[k, 10:14, 12 + k:16 + k] = 1000.0  # bone, moving from slice to slice
    return hu


@pytest.fixture
def series(tmp_path):
    write_dicom_slices(tmp_path / "series", _phantom_hu())
    return tmp_path / "series"


def test_a_ct_dicom_series_becomes_a_study_that_recon_batch_reconstructs(series, tmp_path):
    import operators
    import recon.batch
    from recon.priors.data import ct_attenuation

    path = simulate_study([series], tmp_path / "study.h5", "ct", n_angles=40, noise=0.0)
    with h5py.File(path) as f:
        truth, y, attrs = f["ground_truth"][()], f["measurement"][()], dict(f.attrs)
    np.testing.assert_allclose(truth, ct_attenuation(_phantom_hu()), atol=1e-6)  # slices in patient order
    expected = operators.ParallelBeamCT(32, n_angles=40).A(torch.from_numpy(truth)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(y, expected, atol=1e-4)
    assert attrs["operator"] == "parallel_beam_ct" and attrs["source_units"] == "HU"
    assert list(attrs["intensity_window"]) == [-1000.0, 1500.0] and attrs["affine"].shape == (4, 4)
    summary = recon.batch.run([str(path)], str(tmp_path / "runs"), method="fbp", progress=None)
    assert summary.ok
    with h5py.File(summary.outputs[0]) as f:
        assert np.all(f["psnr"][()] > 20)  # noiseless 40-view FBP of a blocky phantom


def test_mri_kspace_is_complex_under_its_mask_and_noise_only_where_measured(tmp_path):
    np.save(tmp_path / "t1.npy", np.random.default_rng(1).uniform(0, 200, (2, 32, 32)))
    path = simulate_study([tmp_path / "t1.npy"], tmp_path / "mri.h5", "mri", acceleration=4, noise=0.05, seed=3)
    with h5py.File(path) as f:
        y, mask, truth = f["measurement"][()], f["mask"][()], f["ground_truth"][()]
        sigma = f.attrs["noise_sigma"]
    assert y.dtype == np.complex64 and y.shape == (2, 32, 32) and truth.max() == 1.0
    assert np.all(y[:, mask == 0] == 0) and 4 <= 32 / mask[0].sum() * 1.0 <= 6
    import operators

    clean = operators.CartesianMRI(32, mask=mask).A(torch.from_numpy(truth)[:, None]).numpy()
    residual = (y.real - clean[:, 0])[:, mask > 0]
    assert residual.std() == pytest.approx(sigma, rel=0.2) and sigma > 0


def test_sr_needs_a_size_the_factor_divides(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((30, 30)))
    with pytest.raises(ValueError, match="--size"):
        simulate_study([tmp_path / "img.npy"], tmp_path / "sr.h5", "sr", factor=4)
    path = simulate_study([tmp_path / "img.npy"], tmp_path / "sr.h5", "sr", factor=4, size=32, noise=0.0)
    with h5py.File(path) as f:
        assert f["measurement"].shape == (1, 8, 8) and f["ground_truth"].shape == (1, 32, 32)
        assert f.attrs["factor"] == 4


def test_a_lower_dose_gives_noisier_sinograms_and_a_larger_noise_level(series, tmp_path):
    levels, errors = [], []
    clean_path = simulate_study([series], tmp_path / "clean.h5", "ct", noise=0.0)
    with h5py.File(clean_path) as f:
        clean = f["measurement"][()]
    for dose in (1e3, 1e5):
        path = simulate_study([series], tmp_path / f"d{dose:g}.h5", "ct", dose=dose)
        with h5py.File(path) as f:
            errors.append(np.sqrt(np.mean((f["measurement"][()] - clean) ** 2)))
            levels.append(f.attrs["noise_sigma"])
    assert errors[0] > 5 * errors[1] and levels[0] > 5 * levels[1]
    assert errors[0] == pytest.approx(levels[0], rel=0.3)  # the stored level is the noise there is


def test_an_existing_study_is_refused_before_the_images_are_read(series, tmp_path, monkeypatch):
    import recon.io.volume

    study = tmp_path / "study.h5"
    study.write_bytes(b"a user's file")
    monkeypatch.setattr(recon.io.volume, "read_images", lambda *a: pytest.fail("images read before the checks"))
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        simulate_study([series], study, "ct")
    assert study.read_bytes() == b"a user's file"


@pytest.mark.parametrize("modality, flags, match", [
    ("mri", {"dose": 1e4}, "--dose"),
    ("ct", {"acceleration": 4}, "--acceleration"),
    ("ct", {"dose": 1e4, "noise": 0.01}, "not both"),
    ("ct", {"noise": float("nan")}, "--noise"),
    ("ct", {"dose": -1.0}, "--dose"),
])
def test_settings_that_do_not_apply_are_refused(series, tmp_path, modality, flags, match):
    with pytest.raises(ValueError, match=match):
        simulate_study([series], tmp_path / "s.h5", modality, **flags)
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("modality, flags, match", [
    ("sr", {"factor": 0}, "--factor"),  # was a ZeroDivisionError
    ("sr", {"factor": 3}, "--factor"),
    ("sr", {"factor": 4, "size": 30}, "not divisible by the factor 4"),
    ("ct", {"n_angles": 0}, "--n-angles"),
    ("mri", {"acceleration": 0.5}, "--acceleration"),
    ("mri", {"center_fraction": 1.5}, "--center-fraction"),
    ("mri", {"mask_pattern": "zigzag"}, "--mask-pattern"),
    ("ct", {"seed": -1}, "--seed"),
])
def test_bad_settings_are_refused_before_the_images_are_read(tmp_path, monkeypatch, modality, flags, match):
    """They were checked only after a whole series had been read (and resized)."""
    import recon.io.volume

    monkeypatch.setattr(recon.io.volume, "read_images", lambda *a: pytest.fail("images read before the checks"))
    with pytest.raises(ValueError, match=match):
        simulate_study([tmp_path / "never_read.npy"], tmp_path / "s.h5", modality, **flags)
    assert not (tmp_path / "s.h5").exists()


def test_resizing_keeps_the_field_of_view_in_the_stored_affine(tmp_path):
    import nibabel

    affine = np.array([[0.5, 0, 0, -16], [0, 0.5, 0, -16], [0, 0, 2.0, 4], [0, 0, 0, 1]])
    voxels = np.random.default_rng(0).uniform(1, 2, (64, 48, 2)).astype(np.float32)  # x 64, y 48
    nibabel.save(nibabel.Nifti1Image(voxels, affine), tmp_path / "t1.nii")
    path = simulate_study([tmp_path / "t1.nii"], tmp_path / "mri.h5", "mri", size=32)
    with h5py.File(path) as f:
        new = f.attrs["affine"]
        assert f["ground_truth"].shape == (2, 32, 32)
    np.testing.assert_allclose(new @ [15.5, 15.5, 1, 1], affine @ [31.5, 23.5, 1, 1])  # the centre stays
    np.testing.assert_allclose(new @ [-0.5, -0.5, 0, 1], affine @ [-0.5, -0.5, 0, 1])  # and the corner


def test_a_few_hot_pixels_do_not_set_the_scale_and_negative_images_are_named(tmp_path, caplog):
    """One pixel at 1e5 in an image up to 700 made the ground truth black (everything below 0.007)."""
    image = np.random.default_rng(0).uniform(100, 700, (32, 32))
    image[3, 4] = 1e5
    np.save(tmp_path / "hot.npy", image)
    with h5py.File(simulate_study([tmp_path / "hot.npy"], tmp_path / "hot.h5", "sr", factor=4)) as f:
        truth, window = f["ground_truth"][()], f.attrs["intensity_window"]
    assert window[1] < 1000 and np.median(truth) > 0.5
    np.save(tmp_path / "z.npy", np.random.default_rng(1).normal(size=(32, 32)))  # z-scored: half negative
    simulate_study([tmp_path / "z.npy"], tmp_path / "z.h5", "sr", factor=4)
    assert "of the pixels are negative and become 0" in caplog.text


def test_an_acceleration_the_mask_cannot_give_is_said_and_recorded(tmp_path, caplog):
    """--acceleration 16 on 32 columns measured the 3-column centre (10.7x) and was recorded as 16x."""
    np.save(tmp_path / "t1.npy", np.random.default_rng(1).uniform(0, 200, (1, 32, 32)))
    path = simulate_study([tmp_path / "t1.npy"], tmp_path / "mri.h5", "mri", acceleration=16)
    with h5py.File(path) as f:
        assert f.attrs["acceleration"] == 16 and f.attrs["acceleration_achieved"] == pytest.approx(32 / 3)
        assert "3 of 32 columns" in f.attrs["description"]
    assert "measures 3 of 32 columns, 10.7x, not the 16x asked" in caplog.text


def test_a_seed_beyond_64_bits_is_refused_before_any_work(tmp_path):
    np.save(tmp_path / "img.npy", np.ones((32, 32)))
    with pytest.raises(ValueError, match="seed must be an integer >= 0 and < 2"):
        simulate_study([tmp_path / "img.npy"], tmp_path / "s.h5", "mri", seed=2**64)
    assert not (tmp_path / "s.h5").exists()
