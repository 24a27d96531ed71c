"""``reconstruct_volume``: a volume's slices with one self-validation, as ``recon batch`` does a file."""

import numpy as np
import pytest
import torch

from methods_stand_ins import CountingBlur, tomography_case
from recon.methods import reconstruct, reconstruct_volume, volume

QUICK = dict(train_steps=12, batch=4)


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


def _volume(y, n=4):
    """``n`` slices that differ: the measurement scaled slice by slice."""
    return [y * (0.8 + 0.1 * i) for i in range(n)]


def test_the_reference_slice_chooses_for_the_volume_as_the_batch_does(ct, single_torch_thread):
    """The middle slice self-validates with the training slices as its neighbours; every other slice
    samples with its choice and seed + index: the same numbers as those calls made by hand."""
    physics, _, y = ct
    ys, prior = _volume(y), CountingBlur()
    base = dict(prior=prior, n_samples=2, steps=4, t0=0.4)
    made = reconstruct_volume(ys, physics, seed=5, **base)
    assert volume.reference_slice(4) == 2 and volume.training_slices(4, volume.TRAINING_SLICES["cg"]) == [0, 1, 3]
    by_hand = reconstruct(ys[2], physics, seed=7, neighbours=[ys[0], ys[1], ys[3]], **base)
    assert np.array_equal(made[2].mean, by_hand.mean) and np.array_equal(made[2].std, by_hand.std)
    for i in (0, 1, 3):
        other = reconstruct(ys[i], physics, seed=5 + i, choice=by_hand.choice, **base)
        assert np.array_equal(made[i].mean, other.mean) and np.array_equal(made[i].std, other.std)
        assert made[i].metadata["self_validation"]["shared"] is True
        assert made[i].metadata["volume"] == {"slices": 4, "reference": 2, "training_slices": [0, 1, 3],
                                              "adapt": "off", "index": i}
    assert len(made[2].metadata["self_validation"]["neighbour_shared_error_ratios"]) == 3


def test_an_unset_adapt_steers_long_volumes_of_ccdf_only(ct, monkeypatch, single_torch_thread):
    """The batch's rule: "auto" for ccdf over AUTO_ADAPT_SLICES slices or more with K >= AUTO_ADAPT_SAMPLES
    (lowered here to 3 slices and K = 2, the training shortened), "off" elsewhere."""
    from recon.priors import load_prior

    assert volume.default_adapt("ccdf", 8, 16) == "auto"
    assert [volume.default_adapt(*case) for case in (("ccdf", 8, 15), ("ccdf", 4, 48), ("genreg", 8, 48))] == ["off"] * 3
    physics, _, y = ct
    monkeypatch.setattr(volume, "AUTO_ADAPT_SLICES", 3)
    monkeypatch.setattr(volume, "AUTO_ADAPT_SAMPLES", 2)
    steered = {**QUICK, "mode": "on"}
    monkeypatch.setattr(volume, "VOLUME_ADAPT", steered)
    made = reconstruct_volume(_volume(y, 3), physics, prior=load_prior("ct"), n_samples=2, steps=4, t0=0.4)
    steering = made[1].metadata["self_validation"]["steering"]
    assert steering["training_images"] == 3 and made[1].choice.adapters is not None
    assert all(result.metadata["volume"]["adapt"] == steered for result in made)
    assert made[0].metadata["self_validation"]["shared"] and made[0].metadata["adapt"] == "choice"
    monkeypatch.setattr(volume, "AUTO_ADAPT_SLICES", 4)  # a shorter volume than that is not steered
    short = reconstruct_volume(_volume(y, 3), physics, prior=CountingBlur(), n_samples=2, steps=4, t0=0.4)
    assert short[1].metadata["volume"]["adapt"] == "off" and short[1].metadata["adapt"] == "off"


def test_every_slice_is_checked_before_any_work(ct, single_torch_thread):
    physics, _, y = ct
    prior, calls = CountingBlur(), []
    base = dict(prior=prior, n_samples=2, steps=4, t0=0.4, callback=lambda *step: calls.append(step))
    bad = _volume(y)
    bad[3] = bad[3].clone()
    bad[3][..., 0] = float("nan")
    with pytest.raises(ValueError, match=r"ys\[3\]: y contains [0-9]+ NaN"):
        reconstruct_volume(bad, physics, **base)
    with pytest.raises(ValueError, match=r"ys\[2\]: .*expected measurement of shape \(B, 1, 46, 20\)"):
        reconstruct_volume([y, y, y[..., :-1]], physics, **base)
    with pytest.raises(ValueError, match="2 operators for 3 slices"):
        reconstruct_volume(_volume(y, 3), [physics, physics], **base)
    other = tomography_case.__globals__["dinv"].physics.Tomography(angles=20, img_width=24, circle=False, normalize=True)
    with pytest.raises(ValueError, match=r"ys\[0\]: its operator's images are"):
        reconstruct_volume([other.A(torch.zeros(1, 1, 24, 24)), y], [other, physics], **base)
    with pytest.raises(ValueError, match="holds no slices"):
        reconstruct_volume([], physics, **base)
    with pytest.raises(TypeError, match="slices' measurements"):
        reconstruct_volume("scan.npy", physics, **base)
    with pytest.raises(TypeError, match="choice, neighbours not taken"):
        reconstruct_volume(_volume(y), physics, neighbours=[y], choice=None, **base)
    with pytest.raises(ValueError, match="unknown method"):
        reconstruct_volume(_volume(y), physics, method="sart", prior=prior)
    assert prior.calls == 0 and calls == []


def test_a_method_without_a_prior_runs_each_slice_alone_reference_first(ct, single_torch_thread):
    """tv makes no choice to share: each slice runs as it would alone; the callback names the slice,
    the reference's steps first."""
    physics, _, y = ct
    ys, seen = np.stack([v.numpy() for v in _volume(y, 3)]), []
    made = reconstruct_volume(ys, physics, method="tv", lambda_tv=0.01, callback=lambda i, step, total, _: seen.append(i))
    for i in range(3):
        alone = reconstruct(ys[i], physics, method="tv", lambda_tv=0.01, seed=i)
        assert np.array_equal(made[i].mean, alone.mean)
    order = list(dict.fromkeys(seen))
    assert order == [1, 0, 2]
    assert made[0].metadata["volume"]["training_slices"] == []
