"""The real scans (recon.priors.scans) and the training and held-out images made from them (recon.priors.data)."""

import numpy as np
import pytest

from recon.priors import data, scans

needs_scans = pytest.mark.skipif(not scans.available(), reason="real scans not installed (scripts/setup_scans.sh)")


def test_split_training_blocks_keep_the_gap_around_every_held_out_slice():
    split = scans.Split(evaluation=(40, 42), tuning=(10,), gap=3)
    blocks = split.training_blocks(60)
    used = [k for block in blocks for k in block]
    assert used == sorted(set(used))
    for held in (40, 42, 10):
        assert all(abs(k - held) > 3 for k in used)
    assert set(used) | set(range(7, 14)) | set(range(37, 46)) == set(range(60))


@pytest.mark.parametrize("split", [scans.CT_SPLIT, scans.MR_SPLIT])
def test_tuning_slab_is_held_out_of_training_and_apart_from_the_evaluation_slab(split):
    slab = split.tuning_slab()
    assert len(set(slab)) == 8 and all(abs(k - split.tuning[0]) <= split.gap for k in slab)
    n = max(split.evaluation) + 2 * split.gap + 10
    trained = {k for block in split.training_blocks(n) for k in block}
    assert not trained & set(slab)
    assert min(abs(a - b) for a in slab for b in split.evaluation) > split.gap


def test_no_training_slice_or_reformat_holds_a_held_out_slice():
    """Slice k of a volume holds the value k + 1: every training pixel must come from training blocks."""
    split = scans.Split(evaluation=(20, 22), tuning=(8,), gap=2)
    n = 40
    coded = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None] / n, (n, 24, 24)).copy()
    pool = data._scan_training_slices(scans.Volume(coded, (1.5, 1.0, 1.0)), split, 0.0)
    blocks = split.training_blocks(n)
    assert len(pool) > sum(len(b) for b in blocks)  # the reformats are there too
    for image in pool:
        values = image[image > 0] * n - 1  # slice indices, blended only between neighbours of one block
        assert any(values.min() >= b.start - 1e-3 and values.max() <= b.stop - 1 + 1e-3 for b in blocks)


def test_missing_scan_names_the_package_to_install(tmp_path, monkeypatch):
    missing = tmp_path / "Cranium.inv3"
    monkeypatch.setattr(scans, "CRANIUM_CT", missing)
    monkeypatch.setitem(scans.PACKAGES, missing, "invesalius-examples")
    scans.head_ct.cache_clear()
    try:
        with pytest.raises(scans.ScanMissing, match="apt-get install invesalius-examples"):
            scans.head_ct()
    finally:
        scans.head_ct.cache_clear()


@needs_scans
def test_head_ct_is_read_in_hounsfield_units_with_its_spacing():
    volume = scans.head_ct()
    assert volume.data.shape == (108, 256, 256)
    assert volume.spacing == pytest.approx((1.5, 0.957, 0.957), abs=1e-3)
    air, bone = np.percentile(volume.data, [1, 99.9])
    assert -1100 < air < -900 and bone > 1000


@needs_scans
def test_colin_t1_is_read_as_axial_slices():
    volume = scans.colin_t1()
    assert volume.data.shape == (181, 217, 181) and volume.spacing == (1.0, 1.0, 1.0)


@needs_scans
@pytest.mark.parametrize("name", data.REAL_SETS)
def test_real_images_are_fixed_and_in_range(name):
    a, b = data.real_images(name, 64), data.real_images(name, 64)
    assert a.dtype == np.float32 and a.shape[1:] == (64, 64)
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() <= 1 and a.max() > 0.5


@needs_scans
@pytest.mark.parametrize("kind", ["ct-real", "mri-real"])
def test_real_training_sources_are_reproducible_and_show_anatomy(kind):
    source = data.training_source(kind)
    a = source.sample(np.random.default_rng([0, 5]), 16, 32)
    b = source.sample(np.random.default_rng([0, 5]), 16, 32)
    assert a.shape == (16, 32, 32) and np.array_equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    assert np.median((a > 0.05).mean(axis=(1, 2))) > 0.15  # crops land on the body, not on the air around it


@needs_scans
def test_real_training_data_never_hold_the_evaluation_slices():
    held = [data.ct_attenuation(scans.head_ct().data[k]) for k in scans.CT_SPLIT.evaluation + scans.CT_SPLIT.tuning]
    pool = data._real_ct_pool()
    for image in pool:
        if image.shape == held[0].shape:
            assert all(not np.allclose(image, h) for h in held)
