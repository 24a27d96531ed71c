"""``recon reconstruct``: a measurement file in, a result file out that reopens with its metadata."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recon.cli import app
from recon.result import load_result


@pytest.fixture(scope="module")
def sinogram(tmp_path_factory):
    import operators

    physics = operators.ParallelBeamCT(image_size=32, n_angles=20)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:22] = 0.7
    path = tmp_path_factory.mktemp("cli") / "sino.npy"
    np.save(path, physics.A(x)[0].numpy())
    return path, x[0].numpy(), physics


def test_reconstruct_command_writes_a_result_that_matches_the_api(sinogram, tmp_path):
    from recon import reconstruct

    path, _, physics = sinogram
    out = tmp_path / "tv.h5"
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(out), "--operator", "ct", "--size", "32",
                                   "--angles", "20", "--method", "tv"])
    assert run.exit_code == 0, run.output
    result = load_result(out)
    assert result.metadata["method"] == "tv" and result.metadata["operator"] == "ParallelBeamCT"
    direct = reconstruct(np.load(path), physics, method="tv")
    np.testing.assert_allclose(result.mean, direct.mean, atol=1e-5)


def test_reconstruct_command_rejects_a_wrong_angle_count(sinogram, tmp_path):
    path, _, _ = sinogram
    run = CliRunner().invoke(app, ["reconstruct", str(path), "-o", str(tmp_path / "x.h5"), "--size", "32", "--angles", "30"])
    assert run.exit_code != 0
    assert "angles" in run.output
    assert not (tmp_path / "x.h5").exists()
