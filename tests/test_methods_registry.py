"""The method records (recon/methods/registry.py): every front end offers the same methods, with the
same defaults, and refuses options a method does not take before any work."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recon.batch import settings as batch_settings
from recon.cli import app
from recon import operator_kinds
from recon.methods import api, registry
from recon.viewer import jobs

NAMES = ("fbp", "tv", "ccdf", "diffusion", "genreg")


class Smooth(torch.nn.Module):
    """Stand-in prior: a 3x3 mean; counts its calls."""

    channels = 1
    metadata = {"name": "smooth", "checksum": "0" * 64, "sigma_min": 0.002, "sigma_max": 80.0}

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


@pytest.fixture(scope="module")
def ct():
    import operators

    physics = operators.ParallelBeamCT(32, n_angles=12)
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:22] = 0.8
    return physics, physics.A(x)


def test_every_front_end_lists_the_registry_methods():
    assert registry.METHOD_NAMES == NAMES
    assert tuple(api.METHODS) == NAMES and tuple(jobs.METHODS) == NAMES
    for name in NAMES:
        assert batch_settings.validate({"method": name}).method == name
    assert api.PRIOR_METHODS == {"ccdf", "diffusion", "genreg"}
    for command in ("reconstruct", "batch"):
        help_text = re.sub(r"[│\s]+", " ", CliRunner().invoke(app, [command, "--help"]).output)  # rich wraps it
        assert ", ".join(NAMES) in help_text, help_text


def test_steps_and_t0_defaults_are_the_same_everywhere(ct):
    physics, y = ct
    expected = {"fbp": None, "tv": None, "ccdf": 20, "diffusion": 100, "genreg": None}
    for name, steps in expected.items():
        record = registry.METHODS[name]
        assert (record.defaults["steps"] if record.takes("steps") else None) == steps
        assert batch_settings.validate({"method": name}).with_method_defaults().steps == steps
        assert jobs.default_steps(name) == steps
        assert jobs.ReconstructionRequest(image=np.zeros((32, 32)), method=name).steps is None  # -> the API's
    # the API applies them: metadata of a run without steps
    for name in ("ccdf", "diffusion"):
        result = api.reconstruct(y, physics, method=name, prior=Smooth(), n_samples=1, device="cpu")
        assert result.metadata["steps"] == expected[name]
    assert registry.METHODS["ccdf"].defaults["t0"] == "auto"
    assert batch_settings.validate({}).with_method_defaults().t0 == "auto"


def test_options_a_method_does_not_take_are_refused_before_work(ct, tmp_path):
    physics, y = ct
    prior = Smooth()
    for method, given in (("tv", dict(steps=5)), ("fbp", dict(steps=5)), ("genreg", dict(steps=5)),
                          ("diffusion", dict(t0=0.3)), ("tv", dict(t0="auto"))):
        (name,) = given
        with pytest.raises(ValueError, match=f"method '{method}' takes no {name}"):
            api.reconstruct(y, physics, method=method, prior=prior if method in api.PRIOR_METHODS else None,
                            device="cpu", **given)
        with pytest.raises(ValueError, match=f"setting '{name}'.*takes no {name}"):
            batch_settings.validate({"method": method, **given})
        if name == "steps":  # the viewer has no t0 field
            with pytest.raises(ValueError, match="takes no steps"):
                jobs.ReconstructionRequest(image=np.zeros((32, 32)), method=method, steps=5)
    with pytest.raises(TypeError, match="zeta"):
        api.reconstruct(y, physics, method="tv", zeta=0.5, device="cpu")
    with pytest.raises(ValueError, match="lambda_tv"):  # tv's options are checked too
        api.reconstruct(y, physics, method="tv", lambda_tv=float("nan"), device="cpu")
    assert prior.calls == 0
    np.save(tmp_path / "y.npy", y[0].numpy())
    run = CliRunner().invoke(app, ["reconstruct", str(tmp_path / "y.npy"), "-o", str(tmp_path / "r.h5"), "--size", "32",
                                   "--method", "tv", "--steps", "5"])
    assert run.exit_code == 2 and "takes no steps" in run.output and not (tmp_path / "r.h5").exists()


def test_batch_fingerprints_of_unchanged_results_do_not_change():
    """Unset steps/t0 hash as the old defaults (20, "auto") where the method takes none or keeps them,
    so outputs written before resume; diffusion's default became 100 steps, so its fingerprint changes."""
    def old(method):  # the settings of the previous version: steps 20 and t0 "auto" for every method
        return replace(batch_settings.validate({"method": "ccdf"}), method=method, steps=20, t0="auto",
                       adapt="off").fingerprint()

    def new(method):  # of a file too short to be steered by default
        return batch_settings.validate({"method": method}).for_volume(1).fingerprint()

    for method in ("fbp", "tv", "ccdf", "genreg"):
        assert new(method) == old(method)
    assert new("diffusion") != old("diffusion")


# ----------------------------------------------------------------------------- default prior by modality
@pytest.mark.parametrize("name, kind, prior", [("ct", "parallel_beam_ct", "ct"), ("fan", "fan_beam_ct", "ct"),
                                               ("mri", "cartesian_mri", "mri"), ("sr", "super_resolution", "natural")])
def test_every_front_end_takes_the_default_prior_from_the_operator_kind(name, kind, prior):
    from recon.batch.task import prior_spec

    assert operator_kinds.operator_kind(name) == kind and operator_kinds.default_prior(kind) == prior
    assert operator_kinds.default_prior(name) == prior
    assert prior_spec(batch_settings.validate({"method": "ccdf"}), kind) == prior
    assert prior_spec(batch_settings.validate({"method": "tv"}), kind) is None
    if name != "fan":  # the viewer offers ct, mri and sr
        settings = jobs.OperatorSettings(kind=name)
        assert jobs.ReconstructionRequest(image=np.zeros((32, 32)), operator=settings).prior == prior


def test_reconstruct_loads_the_prior_of_the_operators_modality(monkeypatch):
    import operators

    import recon.priors

    loaded = []
    monkeypatch.setattr(recon.priors, "load_prior", lambda name, device=None: loaded.append(name) or Smooth())
    x = torch.zeros(1, 1, 32, 32)
    x[..., 8:24, 10:22] = 0.8
    for physics, prior in ((operators.CartesianMRI(32, acceleration=2, seed=0), "mri"),
                           (operators.SuperResolution(32, factor=2), "natural"),
                           (operators.FanBeamCT(32, n_angles=12, source_distance=64, detector_distance=32), "ct")):
        api.reconstruct(physics.A(x), physics, method="ccdf", n_samples=1, steps=2, t0=0.2, device="cpu")
        assert loaded[-1] == prior
    assert api.reconstruct(physics.A(x), physics, method="fbp", device="cpu").metadata["prior_name"] is None
    assert len(loaded) == 3  # fbp loads none


def test_an_operator_of_unknown_modality_needs_a_named_prior():
    import deepinv as dinv

    physics = dinv.physics.Blur(filter=dinv.physics.blur.gaussian_blur(1.0), padding="circular")
    with pytest.raises(ValueError, match="modality of a Blur operator is not known.*name one"):
        api.reconstruct(torch.zeros(1, 1, 32, 32), physics, method="ccdf", device="cpu")
    assert api.reconstruct(torch.zeros(1, 1, 32, 32), physics, method="ccdf", prior=Smooth(), n_samples=1, steps=2,
                           t0=0.2, device="cpu").metadata["prior_name"] == "smooth"
