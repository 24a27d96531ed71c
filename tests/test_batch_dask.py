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


def test_joining_a_running_cluster_with_scheduler_address(tmp_path):
    from distributed import LocalCluster

    images = example_images(2, 32)[0]
    data = write_native_ct(str(tmp_path / "c.h5"), images, n_angles=20)
    single = run([data], tmp_path / "single", method="fbp", progress=False)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        joined = run([data], tmp_path / "joined", method="fbp", scheduler=cluster.scheduler_address, progress=False)
    assert single.ok and joined.ok and joined.done == 2
    with h5py.File(tmp_path / "single" / "c.h5", "r") as f, h5py.File(tmp_path / "joined" / "c.h5", "r") as g:
        assert np.array_equal(f["mean"][()], g["mean"][()])


@pytest.mark.parametrize("adapt", [{"mode": "on", "train_steps": 8, "batch": 2}, "off"])  # a table, as in TOML
def test_self_validated_ccdf_matches_on_one_and_two_workers(tmp_path, adapt):
    """ccdf's held-out split, calibration run, adapters and samples are fixed by the seed, not by the worker:
    the volume's reference slice adapts (or, unsteered, calibrates on its training slices) on one worker,
    and its choice reaches the slices on the others."""
    images = example_images(3, 32)[0]
    studies = [write_native_ct(str(tmp_path / "s.h5"), images, n_angles=20, seed=1),
               write_native_ct(str(tmp_path / "t.h5"), images[::-1].copy(), n_angles=24, seed=2)]
    settings = dict(method="ccdf", samples=2, steps=3, progress=False, adapt=adapt)
    single = run(studies, tmp_path / "single", **settings)
    dask = run(studies, tmp_path / "dask", workers=2, **settings)
    assert single.ok and dask.ok and dask.done == 6
    for name in ("s.h5", "t.h5"):
        with h5py.File(tmp_path / "single" / name, "r") as f, h5py.File(tmp_path / "dask" / name, "r") as g:
            for dataset in ("mean", "std"):
                assert np.array_equal(f[dataset][()], g[dataset][()]), (name, dataset)
            assert np.any(f["std"][()] > 0)  # calibrated, not empty
    # the slices' log lines (the self-validation's choice) reach recon-batch.log from the workers too
    lines = {name: sorted(line.split(" ", 2)[2] for line in (tmp_path / name / "recon-batch.log").read_text().splitlines()
                          if " recon.methods." in line) for name in ("single", "dask")}
    assert lines["single"] and lines["dask"] == lines["single"]
