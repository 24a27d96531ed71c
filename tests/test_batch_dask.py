"""Scale-out: a 2-worker local Dask cluster on the CPU gives the same output as one process."""

import h5py
import numpy as np
import pytest

from recon.batch import run
from recon.demo import example_images, write_native_ct

pytest.importorskip("distributed")


def test_two_dask_workers_match_a_single_process_run_exactly(tmp_path):
    images = example_images(3, 32)[0]
    first = write_native_ct(str(tmp_path / "a.h5"), images, n_angles=20, seed=1)
    second = write_native_ct(str(tmp_path / "b.h5"), images[::-1].copy(), n_angles=24, seed=2)
    single = run([first, second], tmp_path / "single", method="tv", options={"max_iter": 10}, progress=False)
    dask = run([first, second], tmp_path / "dask", method="tv", options={"max_iter": 10}, workers=2, progress=False)
    assert single.ok and dask.ok and dask.done == 6
    for name in ("a.h5", "b.h5"):
        with h5py.File(tmp_path / "single" / name, "r") as f, h5py.File(tmp_path / "dask" / name, "r") as g:
            for dataset in ("mean", "std", "initial", "psnr", "ssim"):
                assert np.array_equal(f[dataset][()], g[dataset][()], equal_nan=True), (name, dataset)
            assert f.attrs["fingerprint"] == g.attrs["fingerprint"]  # a Dask run resumes a local one and back
    # resuming the Dask output in one process finds nothing to do
    again = run([first, second], tmp_path / "dask", method="tv", options={"max_iter": 10}, progress=False)
    assert again.skipped == 6 and again.done == 0
