"""Operator descriptions (recon/geometry.py): each builds the operator the front ends built before,
pickles, and is stored in a Result so that the same geometry is rebuilt from the file."""

import json
import pickle

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import operators
from recon import geometry
from recon.cli import app
from recon.result import load_result

MASK = np.zeros((32, 32), np.float32)
MASK[:, [0, 3, 7, 12, 14, 15, 16, 17, 20, 29]] = 1

CASES = [
    (geometry.ParallelBeamCT((32, 32), n_angles=12, n_detectors=40),
     lambda: operators.ParallelBeamCT((32, 32), n_angles=12, n_detectors=40)),
    (geometry.ParallelBeamCT(32, angles=(0.0, 0.4, 1.1, 2.0), detector_spacing=1.5, pixel_size=0.5),
     lambda: operators.ParallelBeamCT(32, angles=np.array([0.0, 0.4, 1.1, 2.0]), detector_spacing=1.5, pixel_size=0.5)),
    (geometry.FanBeamCT((32, 32), n_angles=10, source_distance=64.0, detector_distance=32.0),
     lambda: operators.FanBeamCT((32, 32), n_angles=10, source_distance=64.0, detector_distance=32.0)),
    (geometry.CartesianMRI((32, 32), acceleration=4, center_fraction=0.1, pattern="equispaced", mask_seed=3),
     lambda: operators.CartesianMRI((32, 32), acceleration=4, center_fraction=0.1, pattern="equispaced", seed=3)),
    (geometry.CartesianMRI((32, 32), mask=MASK, complex_images=True),
     lambda: operators.CartesianMRI((32, 32), mask=MASK, complex_images=True)),
    (geometry.SuperResolution((32, 32), factor=2, channels=1),
     lambda: operators.SuperResolution((32, 32), factor=2)),
]


def _same_operator(a, b):
    x = torch.rand(1, *b.img_shape, generator=torch.Generator().manual_seed(0)) if hasattr(b, "img_shape") else None
    if x is None:
        x = torch.rand(1, 2 if getattr(b, "complex_images", False) else 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert type(a) is type(b)
    assert torch.equal(a.A(x), b.A(x))


@pytest.mark.parametrize("description, direct", CASES, ids=lambda c: getattr(c, "kind", ""))
def test_a_description_builds_the_operator_pickles_and_round_trips_through_json(description, direct):
    _same_operator(description.build(), direct())
    _same_operator(pickle.loads(pickle.dumps(description)).build(), direct())
    values = json.loads(json.dumps(description.to_dict()))
    assert values["kind"] == description.kind
    again = geometry.describe(values)
    assert again.to_dict() == description.to_dict()
    _same_operator(again.build(), direct())


def test_a_batch_spec_is_a_description_plus_non_geometry_keys():
    spec = {"kind": "fan_beam_ct", "image_size": [32, 32], "noise_sigma": 0.1, "n_angles": 10, "n_detectors": 48,
            "angles": None, "channels": 1, "source_distance": 64.0, "detector_distance": 32.0}
    description = geometry.describe(spec)
    assert description == geometry.FanBeamCT((32, 32), n_angles=10, n_detectors=48, source_distance=64.0,
                                             detector_distance=32.0)
    assert hash(description) == hash(geometry.describe(dict(spec, noise_sigma=0.5)))  # CT operators are cached by it
    with pytest.raises(ValueError, match="unknown operator kind 'pet'"):
        geometry.describe({"kind": "pet", "image_size": [32, 32]})


def test_the_cli_stores_the_description_and_the_file_rebuilds_the_operator(tmp_path):
    physics = operators.ParallelBeamCT(32, n_angles=20)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:22] = 0.7
    np.save(tmp_path / "sino.npy", physics.A(x)[0].numpy())
    run = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "sino.npy"), "-o", str(tmp_path / "r.h5"),
                                   "--size", "32", "--method", "fbp"])
    assert run.exit_code == 0, run.output
    stored = load_result(tmp_path / "r.h5").metadata["operator_description"]
    assert stored["kind"] == "parallel_beam_ct" and stored["n_angles"] == 20
    _same_operator(geometry.describe(stored).build(), physics)


def test_the_viewer_stores_the_description_of_its_operator():
    from recon.viewer import jobs

    settings = jobs.OperatorSettings(kind="mri", acceleration=4, seed=2)
    request = jobs.ReconstructionRequest(image=np.zeros((32, 32), np.float32), operator=settings, method="fbp")
    stored = jobs.run_request(request).metadata["operator_description"]
    _same_operator(geometry.describe(stored).build(), jobs.build_operator(settings, 32))


def test_a_result_says_how_to_rebuild_its_operator(tmp_path):
    import operators
    import torch

    from recon import reconstruct
    from recon.geometry import describe
    from recon.result import load_result

    physics = operators.CartesianMRI(32, acceleration=4, seed=3)
    y = physics.A(torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0)))
    path = reconstruct(y, physics, method="fbp").save(tmp_path / "r.h5")
    rebuilt = describe(load_result(path).metadata["operator_description"]).build()
    assert torch.equal(rebuilt.mask, physics.mask)
    import deepinv

    foreign = deepinv.physics.Denoising()
    assert reconstruct(torch.rand(1, 1, 16, 16), foreign, method="fbp").metadata["operator_description"] is None
