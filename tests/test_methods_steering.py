"""Steering (test-time adaptation), the held-out split and the calibration without ground truth."""

import hashlib

import numpy as np
import pytest
import torch

import operators
from methods_stand_ins import CountingBlur, tomography_case
from recon.methods import api, arguments, option_choice, reconstruct
from recon.methods.adapters import merged, with_adapters
from recon.methods.holdout import Split
from operators.foreign import as_operator
from recon.methods.selfvalidation import STEERED_COVERAGE_FACTORS, calibration_scale, parse_adapt
from recon.methods.steering import AdaptOptions
from recon.priors import load_prior

#: The misfit objective these tests are about (denoising, the default, has tests/test_self_training.py).
MISFIT = {"objective": "misfit"}


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


@pytest.fixture(scope="module")
def prior():
    return load_prior("ct")


def _checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def test_adapters_start_as_the_prior_and_merge_exactly(prior, single_torch_thread):
    adapted, parameters = with_adapters(prior, rank=4, seed=0)
    x, sigma = torch.rand(2, 1, 32, 32), torch.tensor([0.1, 0.3])
    with torch.no_grad():
        assert torch.allclose(adapted(x, sigma), prior(x, sigma), atol=1e-6)
        for p in parameters:  # move the adapters away from zero
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
        moved = adapted(x, sigma)
        assert not torch.allclose(moved, prior(x, sigma), atol=1e-3)
        assert torch.allclose(merged(adapted)(x, sigma), moved, atol=1e-4)


def test_steering_is_deterministic_and_leaves_the_shipped_weights_alone(ct, prior, single_torch_thread):
    physics, _, y = ct
    before = _checksum(prior)
    runs = [reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt=MISFIT) for _ in range(2)]
    assert _checksum(prior) == before
    assert np.array_equal(runs[0].samples, runs[1].samples)
    steering = runs[0].metadata["self_validation"]["steering"]
    assert steering["kept"] is True and steering["backward_passes"] > 0
    assert runs[0].metadata["adapt"] == "on"
    off = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt="off")
    assert not np.array_equal(off.samples, runs[0].samples)


def test_adaptation_stops_at_the_noise_level(ct, prior, single_torch_thread):
    physics, _, y = ct
    loud = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, adapt=MISFIT, noise_sigma=10.0)
    steering = loud.metadata["self_validation"]["steering"]
    assert steering["stopped_at_noise_level_step"] == 0 and steering["backward_passes"] == 0
    quiet = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, adapt=MISFIT, noise_sigma=1e-6)
    assert quiet.metadata["self_validation"]["steering"]["stopped_at_noise_level_step"] is None


@pytest.mark.parametrize("adapt, match", [("maybe", "adapt"), ({"rank": 0}, "rank"), ({"speed": 1}, "speed"),
                                          ({"lr": -1.0}, "lr"), ({"mode": "off"}, "mode"), (3, "adapt"),
                                          ({"objective": "dsm"}, "objective"), ({"patch": 0}, "patch"),
                                          ({"train_steps": 1.5}, "train_steps"),
                                          ({"sigma_floor": 0.5, "sigma_ceiling": 0.1}, "sigma_ceiling"),
                                          ({"start_factor": 0}, "start_factor"),
                                          ({"sigma_floor": float("nan")}, "sigma_floor")])
def test_bad_adapt_options_are_refused_before_any_work(ct, adapt, match):
    physics, _, y = ct
    stand_in = CountingBlur()
    with pytest.raises(ValueError, match=match):
        reconstruct(y, physics, prior=stand_in, adapt=adapt)
    assert stand_in.calls == 0


def test_adapt_is_refused_where_it_cannot_apply(ct):
    physics, _, y = ct
    stand_in = CountingBlur()
    with pytest.raises(ValueError, match="adapt"):
        reconstruct(y, physics, method="tv", adapt="on")
    with pytest.raises(ValueError, match="Conv2d"):
        reconstruct(y, physics, prior=stand_in, adapt="on")
    assert stand_in.calls == 0
    auto = reconstruct(y, physics, prior=stand_in, n_samples=2, steps=3, adapt="auto")
    assert auto.metadata["adapt"] == "off"  # nothing to adapt: auto decides without running anything extra


def test_parse_adapt_defaults():
    assert parse_adapt(None) == ("off", None) and parse_adapt("auto") == ("auto", AdaptOptions())
    assert parse_adapt(False) == ("off", None)
    assert parse_adapt({"mode": "auto", "rank": 2}) == ("auto", AdaptOptions(rank=2))


def test_candidates_never_see_the_held_out_values(ct, scored_estimates, single_torch_thread):
    """Changing only the held-out entries of y changes nothing the fit runs compute."""
    physics, _, y = ct
    seen = scored_estimates
    intensity = (0.0, 1.0)  # the map from A_dagger(y) would read the held-out values
    reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3, t0=0.5, seed=5, intensity_range=intensity)
    from recon.methods.holdout import split_seed

    held = as_operator(physics, y).held_out_entries(0.125, torch.Generator().manual_seed(split_seed(5)))
    assert 0 < int(held.sum()) < held.numel()
    tampered = y + 100.0 * held.to(y.dtype)
    reconstruct(tampered, physics, prior=CountingBlur(), n_samples=2, steps=3, t0=0.5, seed=5, intensity_range=intensity)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])


def test_mri_holds_out_mirrored_pairs_outside_the_centre(single_torch_thread):
    from operators.mri import _mirror

    op = operators.CartesianMRI(32, acceleration=2, center_fraction=0.125, seed=0)
    held = op.held_out_entries(0.25, torch.Generator().manual_seed(0))[0, 0].float()
    assert held.sum() > 0
    fit = op.mask * (1 - held)
    assert float((held * _mirror(fit)).sum()) == 0  # the conjugate of a held-out entry is never fit data
    assert bool((held <= op.mask).all())  # only measured entries
    assert held[:, 14:19].sum() == 0  # the fully sampled centre stays with the fit data
    fit_operator = op.restricted(~op.held_out_entries(0.25, torch.Generator().manual_seed(0)))
    assert torch.equal(fit_operator.mask, fit)


def test_fit_estimate_ignores_held_out_values(ct):
    physics, _, y = ct
    physics = as_operator(physics, y)
    held = physics.held_out_entries(0.125, torch.Generator().manual_seed(0))
    a = physics.A_dagger(physics.fill_held_out(y, held))
    b = physics.A_dagger(physics.fill_held_out(y + 50.0 * held.to(y.dtype), held))
    assert torch.allclose(a, b)
    fit = physics.restricted(~held)
    assert torch.count_nonzero(fit.A(torch.rand(1, 1, 32, 32))[held]) == 0


@pytest.mark.parametrize("spread_factor, expected", [(1.0, 1.0), (0.5, 2.0)])
def test_calibration_scale_recovers_the_posterior_spread(spread_factor, expected):
    """Samples and truth drawn from one Gaussian posterior give scale 1; samples half as spread, 2."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, 1, 64, 64)
    physics = _Identity()
    mean = torch.rand(shape, generator=generator)
    truth = mean + 0.1 * torch.randn(shape, generator=generator)
    noise = 0.05
    y = truth + noise * torch.randn(shape, generator=generator)
    samples = mean + spread_factor * 0.1 * torch.randn((8, *shape[1:]), generator=generator)
    held = torch.rand(shape, generator=generator) < 0.5
    scale = calibration_scale(physics, samples, y, Split(held_out=held, fit_physics=None), noise)
    assert scale == pytest.approx(expected, rel=0.1)


class _Identity:
    def A(self, x):
        return x


def test_the_scale_from_two_samples_fits_the_mean_of_eight():
    """Samples that share an error (variance 4 v) besides their own deviations (v): the std map of an
    8-sample mean, scaled from a 2-sample run, has the RMS of that mean's error; the formula that
    assumes the 2-sample run's own K would be 10 % low."""
    from recon.methods.selfvalidation import shared_error_ratio, std_scale

    generator = torch.Generator().manual_seed(0)
    shape, v = (1, 1, 256, 256), 0.01
    truth = torch.rand(shape, generator=generator)
    shared = 2 * v**0.5 * torch.randn(shape, generator=generator)

    def draw(k):
        return truth + shared + v**0.5 * torch.randn((k, *shape[1:]), generator=generator)

    held = torch.rand(shape, generator=generator) < 0.5
    ratio = shared_error_ratio(_Identity(), draw(2), truth, Split(held_out=held, fit_physics=None), 0.0)
    assert ratio == pytest.approx(4.0, rel=0.1)
    eight = draw(8)
    error_rms = float((eight.mean(0) - truth[0]).pow(2).mean().sqrt())
    std_map_rms = float(eight.std(0, unbiased=True).pow(2).mean().sqrt()) * (1 + 1 / 8) ** 0.5
    assert std_scale(ratio, 8) * std_map_rms == pytest.approx(error_rms, rel=0.05)
    assert std_scale(ratio, 2) * std_map_rms < 0.92 * error_rms
    assert std_scale(1.0, 8) == pytest.approx(1.0) and std_scale(1.0, 2) == pytest.approx(1.0)  # posterior draws


def test_a_steered_run_keeps_the_unsteered_runs_shared_error_where_it_only_narrows_the_spread():
    """Adapted samples that agree twice as closely and fit the measured entries better, but keep the
    error in what is never measured: the ratio their held-out entries give alone would make the
    std too narrow for the image's error; the floor at the unadapted run's shared error keeps it."""
    from recon.methods.selfvalidation import shared_error_ratio, std_scale, steered_error_ratio

    generator = torch.Generator().manual_seed(0)
    shape, v = (1, 1, 128, 128), 0.01
    truth = torch.rand(shape, generator=generator)
    measured = torch.zeros(shape, dtype=torch.bool)
    measured[..., ::2, :] = True  # half the image is seen by the measurement, held-out entries among it
    held = measured & (torch.rand(shape, generator=generator) < 0.25)
    unseen_error = 2 * v**0.5 * torch.randn(shape, generator=generator)
    seen_error = 2 * v**0.5 * torch.randn(shape, generator=generator)

    def draw(k, spread, seen):
        shared = torch.where(measured, seen * seen_error, unseen_error)
        return truth + shared + spread * v**0.5 * torch.randn((k, *shape[1:]), generator=generator)

    split = Split(held_out=held, fit_physics=None)
    unsteered, steered = draw(2, 1.0, 1.0), draw(2, 0.5, 0.3)
    q_unsteered = shared_error_ratio(_Identity(), unsteered, truth, split, 0.0)
    q_steered = shared_error_ratio(_Identity(), steered, truth, split, 0.0)
    report = {}
    q = steered_error_ratio(q_steered, q_unsteered, unsteered, steered, report)
    assert report["spread_ratio"] == pytest.approx(4.0, rel=0.1) and report["shared_error_ratio_unsteered"] == q_unsteered
    eight = draw(8, 0.5, 0.3)
    unseen = ~measured[0]
    error_rms = float((eight.mean(0) - truth[0])[unseen].pow(2).mean().sqrt())
    std_rms = float(eight.var(0, unbiased=True)[unseen].mean().sqrt()) * (1 + 1 / 8) ** 0.5
    assert std_scale(q_steered, 8) * std_rms < 0.6 * error_rms  # the measured entries alone: far too narrow
    assert std_scale(q, 8) * std_rms == pytest.approx(error_rms, rel=0.15)
    # where adapting does not narrow the spread, the steered run's own ratio stands
    assert steered_error_ratio(q_unsteered, 1.0, unsteered, unsteered, {}) == q_unsteered


def test_default_result_has_a_calibrated_std_and_a_quality_signal(ct, single_torch_thread):
    physics, _, y = ct
    result = reconstruct(y, physics, prior=CountingBlur(), n_samples=4, steps=3, t0=0.5)
    raw = reconstruct(y, physics, prior=CountingBlur(), n_samples=4, steps=3, t0=0.5, calibrate=False)
    scale = result.metadata["std_scale"]
    assert scale is not None and scale > 0
    assert result.metadata["self_validation"]["heldout_misfit"] > 0
    assert np.allclose(result.std, raw.std * scale * np.sqrt(1 + 1 / 4), rtol=1e-4, atol=1e-7)
    assert np.array_equal(result.samples, raw.samples)  # calibration changes the std only


def test_the_coverage_factor_scales_only_measured_methods_of_a_known_modality(ct, single_torch_thread, monkeypatch):
    """The held-out energy match times the modality's factor is the std scale of unsteered ccdf and
    genreg (default objective; hard and soft on MR); the metadata keep both. Steered ccdf and genreg (default
    objective) have their own factors; other methods and objectives, steered hard and soft and operators of
    unknown modality keep factor 1."""
    import deepinv as dinv

    from recon.methods import selfvalidation

    physics, _, y = ct
    monkeypatch.setitem(selfvalidation.COVERAGE_FACTORS["ccdf"], "ct", 1.5)
    options = dict(prior=CountingBlur(), n_samples=4, steps=3, t0=0.5, seed=2)
    result = reconstruct(y, physics, **options)
    meta = result.metadata
    assert meta["coverage_factor"] == 1.5 and meta["std_scale"] == pytest.approx(1.5 * meta["std_scale_held_out"])
    shared = reconstruct(y, physics, choice=result.choice, **options)  # the volume's other slices: the factor once
    assert shared.metadata["std_scale"] == pytest.approx(meta["std_scale"])
    assert np.allclose(shared.std, result.std, rtol=1e-5, atol=1e-8)
    assert selfvalidation.coverage_factor("diffusion", physics, adapted=False) == 1.0
    assert selfvalidation.coverage_factor("ccdf", physics, adapted=True) == selfvalidation.STEERED_COVERAGE_FACTORS["ccdf"]["ct"]
    assert selfvalidation.coverage_factor("genreg", physics, adapted=True) == selfvalidation.STEERED_COVERAGE_FACTORS["genreg"]["ct"]
    assert selfvalidation.coverage_factor("genreg", physics, adapted=True, objective="soft") == 1.0  # not measured
    assert selfvalidation.coverage_factor("diffusion", physics, adapted=True) == 1.0
    foreign = dinv.physics.LinearPhysics(A=physics.A, A_adjoint=physics.A_adjoint)
    assert selfvalidation.coverage_factor("ccdf", foreign, adapted=False) == 1.0
    assert selfvalidation.coverage_factor("ccdf", operators.SuperResolution(16, factor=2), adapted=False) \
        == selfvalidation.COVERAGE_FACTORS["ccdf"]["sr"]
    assert selfvalidation.coverage_factor("genreg", physics, adapted=False) == selfvalidation.COVERAGE_FACTORS["genreg"]["ct"]
    assert selfvalidation.coverage_factor("genreg", physics, adapted=False, objective="hard") == 1.0  # CT: not measured
    mri = operators.CartesianMRI(16, acceleration=4)
    assert selfvalidation.coverage_factor("genreg", mri, adapted=False, objective="hard") \
        == selfvalidation.COVERAGE_FACTORS["genreg hard"]["mri"] != selfvalidation.COVERAGE_FACTORS["genreg"]["mri"]
    assert selfvalidation.coverage_factor("genreg", mri, adapted=False, objective="soft") \
        == selfvalidation.COVERAGE_FACTORS["genreg soft"]["mri"]
    assert selfvalidation.coverage_factor("genreg", physics, adapted=False, objective="soft") == 1.0  # CT: not measured
    assert selfvalidation.coverage_factor("genreg", mri, adapted=True, objective="hard") == 1.0
    assert selfvalidation.coverage_factor("genreg", operators.SuperResolution(16, factor=2), adapted=False) \
        == selfvalidation.COVERAGE_FACTORS["genreg"]["sr"]
    assert selfvalidation.coverage_factor("genreg", operators.SuperResolution(16, factor=2), adapted=False,
                                          objective="soft") == selfvalidation.COVERAGE_FACTORS["genreg soft"]["sr"]
    assert selfvalidation.coverage_factor("genreg", operators.SuperResolution(16, factor=2), adapted=False,
                                          objective="hard") == selfvalidation.COVERAGE_FACTORS["genreg hard"]["sr"]
    monkeypatch.setitem(selfvalidation.COVERAGE_FACTORS["genreg"], "ct", 0.5)
    genreg = reconstruct(y, physics, method="genreg", prior=CountingBlur(), n_samples=2, lambda_reg=0.1, max_iter=5)
    assert genreg.metadata["coverage_factor"] == 0.5
    assert genreg.metadata["std_scale"] == pytest.approx(0.5 * genreg.metadata["std_scale_held_out"])


def test_a_std_that_held_out_data_do_not_calibrate_is_named_in_a_warning_and_the_metadata(ct, single_torch_thread,
                                                                                           caplog):
    """Soft's std on CT (selfvalidation.UNCALIBRATED_STD): scaled as usual, but the run says it is not calibrated;
    the same objective on MR, and ccdf on CT, say nothing."""
    from recon.methods import selfvalidation

    physics, _, y = ct
    mri = operators.CartesianMRI(16, acceleration=4)
    assert selfvalidation.calibration_warning("genreg", physics, "soft") == selfvalidation.UNCALIBRATED_STD["genreg soft"]["ct"]
    assert selfvalidation.calibration_warning("genreg", operators.SuperResolution(16, factor=2), "soft") \
        == selfvalidation.UNCALIBRATED_STD["genreg soft"]["sr"]
    for method, operator, objective in (("genreg", mri, "soft"), ("genreg", physics, "hard"), ("genreg", physics, None),
                                        ("ccdf", physics, None)):
        assert selfvalidation.calibration_warning(method, operator, objective) is None
    options = dict(method="genreg", objective="soft", prior=CountingBlur(), n_samples=2, max_iter=3, alpha=1.0, beta=0.1,
                   generator_sigma_max=0.5, seed=1)
    with caplog.at_level("WARNING", logger="recon.methods.api"):
        soft = reconstruct(y, physics, **options)
    assert soft.metadata["std_calibration_warning"] == selfvalidation.UNCALIBRATED_STD["genreg soft"]["ct"]
    assert "do not calibrate its std" in caplog.text and soft.metadata["std_scale"] is not None
    assert "std_calibration_warning" not in reconstruct(y, physics, **options, calibrate=False).metadata
    assert "std_calibration_warning" not in reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3,
                                                        t0=0.5).metadata


def test_tv_lambda_auto_picks_the_candidate_that_predicts_held_out_data(ct, single_torch_thread):
    from recon.methods.baselines import TV_LAMBDAS

    physics, x, y = ct
    noisy = y + 0.02 * float(y.abs().max()) * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    result = reconstruct(noisy, physics, method="tv", lambda_tv="auto", max_iter=30)
    chosen = result.metadata["self_validation"]["chosen"]
    scores = result.metadata["self_validation"]["candidates"]
    assert chosen in TV_LAMBDAS and scores[str(chosen)] == min(scores.values())
    assert result.metadata["parameters"]["lambda_tv"] == chosen
    fixed = reconstruct(noisy, physics, method="tv", lambda_tv=chosen, max_iter=30)
    assert np.array_equal(result.mean, fixed.mean)  # chosen once, then run on all the data
    with pytest.raises(ValueError, match="lambda_tv"):
        reconstruct(noisy, physics, method="tv", lambda_tv="best")


def test_genreg_lambda_auto_and_calibration(ct, single_torch_thread):
    """lambda_reg's candidates are scored on three held-out splits, summed (each split's held-out entries differ)."""
    physics, _, y = ct
    seen = []
    result = reconstruct(y, physics, method="genreg", prior=CountingBlur(), n_samples=2, lambda_reg="auto", max_iter=5,
                         callback=lambda step, total, _: seen.append((step, total)))
    assert result.metadata["parameters"]["lambda_reg"] in option_choice.AUTO_OPTIONS["genreg", "lambda_reg"]
    record = result.metadata["auto_options"]["lambda_reg"]
    assert len(record["per_split"]) == option_choice.AUTO_OPTION_SPLITS["genreg", "lambda_reg"] == 3
    assert len({tuple(split.values()) for split in record["per_split"]}) == 3
    for value, total in record["candidates"].items():
        assert total == pytest.approx(sum(split[value] for split in record["per_split"]) / 3)  # their mean
    assert record["candidates"][str(record["chosen"])] == min(record["candidates"].values())
    n_runs = 3 * len(option_choice.AUTO_OPTIONS["genreg", "lambda_reg"]) + 1 + (arguments.CALIBRATION_SPLITS["genreg"] - 1) + 1
    assert seen[-1] == (5 * n_runs, 5 * n_runs)  # candidates on 3 splits, 4 calibration runs, the final run
    assert result.metadata["std_scale"] is not None  # the restarts' spread, calibrated on held-out data
    with pytest.raises(ValueError, match="lambda_reg"):
        reconstruct(y, physics, method="genreg", prior=CountingBlur(), lambda_reg="best")


def test_genregs_weight_is_chosen_over_the_volumes_slices(ct, single_torch_thread):
    """With neighbours (a volume's other slices), each scores lambda_reg's candidates on one held-out split
    of its own, and so does this slice (alone it takes three), every split counting alike; the runs are
    counted up front; a slice alone still chooses on its own splits."""
    physics, x, y = ct
    generator = torch.Generator().manual_seed(5)
    neighbours = [physics.A(x * (0.7 + 0.1 * i)) + 0.01 * torch.randn(y.shape, generator=generator) for i in range(4)]
    seen = []
    options = dict(method="genreg", prior=CountingBlur(), n_samples=2, lambda_reg="auto", max_iter=5)
    result = reconstruct(y, physics, neighbours=neighbours, callback=lambda step, total, _: seen.append((step, total)),
                         **options)
    record = result.metadata["auto_options"]["lambda_reg"]
    assert option_choice.AUTO_OPTION_SLICES["genreg", "lambda_reg"] >= 4  # all 4 neighbours score
    assert len(record["per_split"]) == 1 and len(record["other_slices_per_split"]) == 4
    assert len({tuple(o.values()) for o in record["other_slices_per_split"] + record["per_split"]}) == 5  # each its own data
    every_split = record["per_split"] + record["other_slices_per_split"]
    for value, score in record["over_slices"].items():
        assert score == pytest.approx(sum(split[value] for split in every_split) / 5)  # every split alike
    assert record["over_slices"][str(record["chosen"])] == min(record["over_slices"].values())
    assert record["chosen"] == result.metadata["parameters"]["lambda_reg"]
    assert result.choice.options == {"lambda_reg": record["chosen"]}
    n_runs = 5 * len(option_choice.AUTO_OPTIONS["genreg", "lambda_reg"]) + 1 + len(neighbours) + 1
    assert seen[-1] == (5 * n_runs, 5 * n_runs)  # candidates on 1 split and 4 neighbours', calibration, final run
    alone = reconstruct(y, physics, **options).metadata["auto_options"]["lambda_reg"]
    assert "other_slices_per_split" not in alone and len(alone["per_split"]) == 3
    assert alone["per_split"][0] == record["per_split"][0]  # the same split 0


def test_a_slice_whose_neighbours_all_fail_scores_its_weight_on_its_own_splits(ct, monkeypatch, single_torch_thread):
    """Every neighbour left out (none can hold data out): the slice's own three splits decide, as alone, and
    the progress, counted for one split, grows by the runs added and still ends at its total."""
    from recon.methods import holdout

    physics, x, y = ct
    seed, made = 3, api._fit_data
    neighbours = [physics.A(x * (0.8 + 0.1 * i)) for i in range(2)]
    failing = {holdout.split_seed(seed + 1 + i, 0) for i in range(len(neighbours))}

    def fit_data(problem, physics, y_raw, imap, noise_sigma, common, generator):
        if generator.initial_seed() in failing:
            raise holdout.TooFewMeasurements("too few")
        return made(problem, physics, y_raw, imap, noise_sigma, common, generator)

    monkeypatch.setattr(api, "_fit_data", fit_data)
    seen = []
    options = dict(method="genreg", prior=CountingBlur(), n_samples=2, lambda_reg="auto", max_iter=2, seed=seed)
    record = reconstruct(y, physics, neighbours=neighbours, callback=lambda step, total, _: seen.append((step, total)),
                         **options).metadata["auto_options"]["lambda_reg"]
    assert len(record["per_split"]) == 3 and "other_slices_per_split" not in record
    assert record["per_split"] == reconstruct(y, physics, **options).metadata["auto_options"]["lambda_reg"]["per_split"]
    assert seen[-1][0] == seen[-1][1] and [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_the_neighbours_scoring_an_option_are_spread_over_them():
    assert option_choice.spread(7, 3) == [0, 3, 6] and option_choice.spread(2, 3) == [0, 1]
    assert option_choice.spread(5, 1) == [2] and option_choice.spread(5, 0) == []
    assert option_choice.spread(15, 7) == [0, 2, 5, 7, 9, 12, 14]


def test_genreg_chooses_only_the_options_its_objective_uses(ct, monkeypatch, single_torch_thread):
    """hard uses the generator's start and alpha, soft also beta, diffusion lambda_reg: "auto" on another
    option runs no candidates; the generator's start is chosen first, by default."""
    physics, _, y = ct
    chosen = []
    choose = option_choice.choose_option

    def recording(fit, problem, physics, specific, record, option, *args):
        chosen.append(option)
        return (yield from choose(fit, problem, physics, specific, record, option, *args))

    monkeypatch.setattr(option_choice, "choose_option", recording)
    options = dict(method="genreg", prior=CountingBlur(), n_samples=2, max_iter=2, generator_steps=2)
    hard = reconstruct(y, physics, objective="hard", alpha="auto", **options)  # lambda_reg: "auto" by default
    assert chosen == ["generator_sigma_max", "alpha"] and "lambda_reg" not in hard.metadata["parameters"]
    assert hard.metadata["parameters"]["alpha"] in option_choice.AUTO_OPTIONS["genreg", "alpha"]
    start = hard.metadata["parameters"]["generator_sigma_max"]
    assert start in option_choice.AUTO_OPTIONS["genreg", "generator_sigma_max"]
    assert hard.choice.options == {"alpha": hard.metadata["parameters"]["alpha"], "generator_sigma_max": start}
    chosen.clear()
    fixed = reconstruct(y, physics, objective="hard", generator_sigma_max=0.2, **options)
    assert chosen == ["alpha"] and fixed.metadata["parameters"]["generator_sigma_max"] == 0.2
    chosen.clear()
    soft = reconstruct(y, physics, objective="soft", alpha="auto", beta="auto", **options)
    assert chosen == ["generator_sigma_max", "alpha", "beta"]
    assert soft.metadata["parameters"]["beta"] in option_choice.AUTO_OPTIONS["genreg", "beta"]
    scores = soft.metadata["auto_options"]["alpha"]["candidates"]  # each choice's held-out scores are kept
    assert soft.metadata["parameters"]["alpha"] == soft.metadata["auto_options"]["alpha"]["chosen"]
    assert scores[str(soft.metadata["parameters"]["alpha"])] == min(scores.values())
    chosen.clear()
    reconstruct(y, physics, alpha="auto", beta="auto", **options)  # the diffusion objective
    assert chosen == ["lambda_reg"]
    for name in ("alpha", "beta", "generator_sigma_max"):
        with pytest.raises(ValueError, match=name):
            reconstruct(y, physics, objective="soft", **{**options, name: "best"})


def test_mri_holds_out_whole_columns_when_it_samples_columns():
    op = operators.CartesianMRI(64, acceleration=4, center_fraction=0.08, seed=1)
    held = op.held_out_entries(0.125, torch.Generator().manual_seed(0))[0, 0]
    columns = held.any(0)
    assert int(columns.sum()) >= 2 and bool((held[:, columns]).all())  # every row of a held-out column


def test_a_measurement_too_small_to_hold_out_is_handled():
    import deepinv as dinv

    physics = dinv.physics.Denoising()
    y = torch.rand(1, 1, 3, 3, generator=torch.Generator().manual_seed(0))  # 9 values: ~1 held out
    quiet = reconstruct(y, physics, method="ccdf", prior=CountingBlur(), n_samples=2, steps=2, t0=0.5)
    assert quiet.metadata["std_scale"] is None and "self_validation" not in quiet.metadata
    with pytest.raises(ValueError, match="held out"):
        reconstruct(y, physics, method="tv", lambda_tv="auto")


def test_t0_validate_scales_auto_t0_by_the_factor_that_predicts_held_out_data(ct, single_torch_thread):
    from recon.methods import ccdf
    from recon.methods.option_choice import T0_FACTORS, T0_SPLITS

    physics, _, y = ct
    auto = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3, calibrate=False)
    chosen = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3, calibrate=False, t0="validate")
    info = chosen.metadata["t0_validation"]
    assert info["factor"] in T0_FACTORS and info["candidates"][str(info["factor"])] == min(info["candidates"].values())
    assert len(info["per_split"]) == T0_SPLITS
    for factor, mean in info["candidates"].items():  # the mean over splits decides, not the first split alone
        assert mean == pytest.approx(sum(split[factor] for split in info["per_split"]) / T0_SPLITS)
    assert len({tuple(split.values()) for split in info["per_split"]}) == T0_SPLITS  # different held-out entries
    assert chosen.metadata["t0"] == pytest.approx(ccdf.clamp_t0(auto.metadata["t0"] * info["factor"]))
    assert chosen.metadata["t0_requested"] == "validate"
    with pytest.raises(ValueError, match="validate"):
        reconstruct(y, physics, prior=CountingBlur(), t0="best")


def test_validation_network_images_counts_every_stage_of_self_validation(ct, single_torch_thread):
    """The metadata's total is every image the prior saw outside the main run: t0's candidates and the
    calibration's run, not the last stage alone; a reused choice spends none."""

    class CountingImages(CountingBlur):
        images = 0

        def forward(self, x, sigma):
            self.images += x.shape[0]
            return super().forward(x, sigma)

    physics, _, y = ct
    prior = CountingImages()
    made = reconstruct(y, physics, prior=prior, n_samples=2, steps=3, t0="validate", seed=2)
    spent = made.metadata["validation_network_images"]
    assert spent == prior.images - round(made.metadata["n_network_evals"] * 2)
    stages = made.metadata["t0_validation"]["network_images"], made.metadata["self_validation"]["network_images"]
    assert all(n > 0 for n in stages) and spent == sum(stages)
    shared = reconstruct(0.9 * y, physics, prior=prior, n_samples=2, steps=3, t0="validate", seed=5, choice=made.choice)
    assert shared.metadata["validation_network_images"] == 0


def test_a_choice_made_with_t0_validate_gives_its_factor_to_the_volume(ct, monkeypatch, single_torch_thread):
    """The reference slice validates the start once; a slice with its choice takes the factor, runs no t0
    candidates, and starts where its own auto t0 times that factor puts it."""
    from recon.methods import ccdf

    physics, _, y = ct
    made = reconstruct(y, physics, prior=CountingBlur(), n_samples=2, steps=3, t0="validate", seed=2)
    factor = made.metadata["t0_validation"]["factor"]
    assert made.choice.options["t0_factor"] == factor
    info, arrays = made.choice.record()
    from recon.methods.selfvalidation import Choice

    def no_candidates(*_args, **_kwargs):
        raise AssertionError("the start was validated again")

    monkeypatch.setattr(option_choice, "choose_t0_factor", no_candidates)
    other = 0.9 * y
    steps = []
    shared = reconstruct(other, physics, prior=CountingBlur(), n_samples=2, steps=3, t0="validate", seed=5,
                         choice=Choice.from_record(info, arrays), callback=lambda s, t, _: steps.append(t))
    auto = reconstruct(other, physics, prior=CountingBlur(), n_samples=2, steps=3, seed=5, calibrate=False)
    assert shared.metadata["t0_validation"] == {"factor": factor, "shared": True}
    assert shared.metadata["t0"] == pytest.approx(ccdf.clamp_t0(auto.metadata["t0"] * factor))
    assert set(steps) == {3}  # one run counted: no validation runs announced


def test_a_shared_choice_reproduces_the_run_that_made_it(ct, prior, monkeypatch, single_torch_thread):
    """A choice stored as plain values and arrays, applied to the same measurement, gives the same samples
    without self-validating again; applied to another measurement it carries the adapters and the scale."""
    from recon.methods.selfvalidation import Choice

    physics, _, y = ct
    made = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt=MISFIT)
    assert made.choice is not None and made.choice.prior is None and len(made.choice.adapters) > 0
    info, arrays = made.choice.record()
    import json

    rebuilt = Choice.from_record(json.loads(json.dumps(info)), arrays)
    from recon.methods import selfvalidation

    def no_second_validation(**_):
        raise AssertionError("self-validation ran again")

    monkeypatch.setattr(selfvalidation, "choose", no_second_validation)
    shared = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt=MISFIT, choice=rebuilt)
    assert np.array_equal(shared.samples, made.samples) and np.array_equal(shared.std, made.std)
    assert shared.metadata["self_validation"]["shared"] is True
    assert shared.metadata["adapt"] == "choice"  # it sampled with the choice's adapters
    plain = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, calibrate=False)
    assert not np.array_equal(plain.samples, shared.samples)  # the adapters did travel
    uncalibrated = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, calibrate=False,
                               choice=rebuilt)
    assert uncalibrated.metadata["std_scale"] is None and np.array_equal(uncalibrated.samples, made.samples)


def test_a_choice_for_other_weights_is_refused_before_any_work(ct, prior, single_torch_thread):
    from recon.methods.selfvalidation import Choice

    physics, _, y = ct
    made = reconstruct(y, physics, prior=prior, n_samples=2, steps=3, t0=0.4, seed=1)
    info, arrays = made.choice.record()
    other = Choice.from_record({**info, "prior_checksum": "0" * 64}, arrays)
    with pytest.raises(ValueError, match="checksum"):
        reconstruct(y, physics, prior=prior, n_samples=2, steps=3, choice=other)
    with pytest.raises(ValueError, match="choice record"):
        Choice.from_record({"prior_label": "ct"}, {})
    with pytest.raises(TypeError, match="choice"):
        reconstruct(y, physics, prior=prior, n_samples=2, steps=3, choice={"std_scale": 1.0})
    with pytest.raises(ValueError, match="no prior"):
        reconstruct(y, physics, method="tv", choice=made.choice)


def test_genreg_samples_with_ccdfs_steered_prior_and_calibrates_its_own_std(ct, prior, single_torch_thread):
    """Given ccdf's choice, genreg uses its adapted prior, not its std scale."""
    physics, _, y = ct
    steered = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt=MISFIT)
    assert steered.choice.method == "ccdf" and steered.choice.adapters
    options = dict(method="genreg", prior=prior, n_samples=2, seed=1, max_iter=4, lambda_reg=0.1)
    plain = reconstruct(y, physics, **options)
    borrowed = reconstruct(y, physics, choice=steered.choice, **options)
    assert not np.array_equal(plain.samples, borrowed.samples)  # the adapters changed the regulariser
    assert borrowed.metadata["prior_from_choice_of"] == "ccdf"
    assert borrowed.metadata["std_scale"] != steered.metadata["std_scale"]  # its own calibration
    assert borrowed.choice.method == "genreg" and len(borrowed.choice.adapters) == len(steered.choice.adapters)
    assert steered.metadata["coverage_factor"] == STEERED_COVERAGE_FACTORS["ccdf"]["ct"]
    assert borrowed.metadata["coverage_factor"] == STEERED_COVERAGE_FACTORS["genreg"]["ct"]  # steered genreg's own


def test_the_held_out_split_does_not_share_the_users_random_stream(ct):
    """Noise simulated with the same seed as the reconstruction must look like noise at the held-out entries."""
    from recon.methods.holdout import split_seed

    physics, _, y = ct
    physics = as_operator(physics, y)
    like = torch.zeros((1, *physics.img_shape))
    measured = physics.measured_entries(like)
    for seed in (0, 1, 42):
        noise = torch.randn(measured.shape, generator=torch.Generator().manual_seed(seed))
        same_stream = physics.held_out_entries(0.125, torch.Generator().manual_seed(seed), like=like)
        ours = physics.held_out_entries(0.125, torch.Generator().manual_seed(split_seed(seed)), like=like)
        assert float(noise[same_stream].pow(2).mean()) < 0.5  # what reusing the seed would do
        assert 0.7 < float(noise[ours].pow(2).mean()) < 1.3


def test_a_shared_choice_carries_genregs_auto_weight(ct, prior, monkeypatch, single_torch_thread):
    """lambda_reg="auto" is settled once: a slice given the choice takes its weight and runs no candidates."""
    physics, _, y = ct
    options = dict(method="genreg", prior=prior, n_samples=2, seed=2, max_iter=4)
    made = reconstruct(y, physics, **options)
    chosen = made.metadata["parameters"]["lambda_reg"]
    assert made.choice.options == {"lambda_reg": chosen}

    def no_candidates(*args, **kwargs):
        raise AssertionError("the candidates ran again")

    monkeypatch.setattr(option_choice, "choose_option", no_candidates)
    shared = reconstruct(y, physics, choice=made.choice, **options)
    assert shared.metadata["parameters"]["lambda_reg"] == chosen
    assert np.array_equal(shared.samples, made.samples)


def test_the_change_z_score_tells_a_real_improvement_from_the_luck_of_the_draw():
    """An estimate with half the error of another scores a large negative z; two estimates with the same
    error level (independent errors) score within the normal range; swapping them flips the sign."""
    generator = torch.Generator().manual_seed(0)
    shape = (1, 1, 64, 64)
    truth = torch.rand(shape, generator=generator)
    y = truth + 0.02 * torch.randn(shape, generator=generator)
    split = Split(held_out=torch.rand(shape, generator=generator) < 0.125, fit_physics=None)

    def estimate(error):
        return truth + error * torch.randn(shape, generator=generator)

    good, bad, other = estimate(0.05), estimate(0.1), estimate(0.1)
    better = split.change_z(_Identity(), good, bad, y)
    assert better < -10
    assert split.change_z(_Identity(), bad, good, y) == pytest.approx(-better)
    assert abs(split.change_z(_Identity(), other, bad, y)) < 3
    assert split.change_z(_Identity(), bad, bad, y) == 0.0


def test_unsteered_neighbours_calibrate_by_the_median_of_the_volumes_ratios(ct, single_torch_thread):
    """Without steering, other slices of the volume calibrate the std: each holds out its own split and
    runs on its fit data alone (``choice_only``); the ratio is the median over them and this slice.
    The samples do not change; the std moves by the ratio of the scales; the progress counts each run."""
    import statistics

    from recon.methods.api import reconstruct_steps
    from recon.methods.selfvalidation import std_scale
    from recon.progress import run_steps

    physics, _, y = ct
    options = dict(prior=CountingBlur(), n_samples=4, steps=3, t0=0.5, seed=3)
    alone = reconstruct(y, physics, **options)
    others = [0.7 * y, (1.3 * y, physics, 0.001)]
    seen = []
    pooled = reconstruct(y, physics, neighbours=others, callback=lambda step, total, _: seen.append((step, total)),
                         **options)
    own = alone.metadata["self_validation"]["shared_error_ratio"]
    firsts = [run_steps(reconstruct_steps(0.7 * y, physics, "ccdf", CountingBlur(), 2, 3, 0.5, 4, choice_only=True)),
              run_steps(reconstruct_steps(1.3 * y, physics, "ccdf", CountingBlur(), 2, 3, 0.5, 5, choice_only=True,
                                          noise_sigma=0.001))]
    ratios = [first.error_ratio for first in firsts]
    record = pooled.metadata["self_validation"]
    assert record["neighbour_shared_error_ratios"] == ratios and record["shared_error_ratio_slice"] == own
    median = statistics.median([own, *ratios])
    assert median != own  # else the test shows nothing
    assert record["shared_error_ratio"] == median and pooled.metadata["std_scale_held_out"] == std_scale(median, 4)
    assert pooled.choice.std_scale_for(4) == std_scale(median, 4)  # what the volume's other slices use
    assert np.array_equal(pooled.samples, alone.samples)
    assert np.allclose(pooled.std, alone.std * std_scale(median, 4) / std_scale(own, 4), rtol=1e-5, atol=1e-8)
    assert (pooled.metadata["validation_network_images"] - alone.metadata["validation_network_images"]
            == sum(first.metadata["network_images"] for first in firsts))  # fit runs only
    assert len({total for _, total in seen}) == 1 and [s for s, _ in seen] == sorted(s for s, _ in seen)
    assert seen[-1] == (4 * 3, 4 * 3)  # 3 steps in each of 4 runs: own fit run, two neighbours, final run


def test_a_slice_alone_calibrates_on_the_mean_ratio_of_several_splits(ct, single_torch_thread):
    """``calibration_splits`` (genreg's default 4): more held-out splits of the same measurement, each with
    its own fit run; the ratio is their mean. The samples do not change; the progress counts each run.
    With neighbours the volume's slices are the other splits, and a bad count is refused before any work."""
    import statistics

    from recon.methods.selfvalidation import std_scale

    physics, _, y = ct
    options = dict(prior=CountingBlur(), n_samples=4, steps=3, t0=0.5, seed=3)
    one = reconstruct(y, physics, calibration_splits=1, **options)
    seen = []
    three = reconstruct(y, physics, calibration_splits=3, callback=lambda step, total, _: seen.append((step, total)),
                        **options)
    record = three.metadata["self_validation"]
    ratios = [record["shared_error_ratio_split"], *record["split_shared_error_ratios"]]
    assert ratios[0] == one.metadata["self_validation"]["shared_error_ratio"] and len(set(ratios)) == 3
    assert record["shared_error_ratio"] == pytest.approx(statistics.fmean(ratios))
    assert three.metadata["std_scale_held_out"] == pytest.approx(std_scale(statistics.fmean(ratios), 4))
    assert np.array_equal(three.samples, one.samples)
    assert seen[-1] == (4 * 3, 4 * 3)  # 3 steps in each of 4 runs: three fit runs, the final run
    assert arguments.CALIBRATION_SPLITS["genreg"] == 4 and "split_shared_error_ratios" not in one.metadata["self_validation"]
    pooled = reconstruct(y, physics, neighbours=[0.7 * y], calibration_splits=3, **options)
    assert "split_shared_error_ratios" not in pooled.metadata["self_validation"]
    for bad in (0, 1.5, "two"):
        with pytest.raises(ValueError, match="calibration_splits"):
            reconstruct(y, physics, calibration_splits=bad, **options)


def test_a_further_split_that_holds_out_too_little_is_left_out(ct, monkeypatch, single_torch_thread):
    """Entries are held out at random, so a further split can hold out too little where split 0 did not:
    it is left out of the weight's score and the calibration, and the progress still reaches its total."""
    from recon.methods import holdout

    physics, _, y = ct
    seed, made = 3, api._fit_data

    def fit_data(problem, physics, y_raw, imap, noise_sigma, common, generator):
        if generator.initial_seed() == holdout.split_seed(seed, 2):
            raise holdout.TooFewMeasurements("too few")
        return made(problem, physics, y_raw, imap, noise_sigma, common, generator)

    monkeypatch.setattr(api, "_fit_data", fit_data)
    seen = []
    result = reconstruct(y, physics, method="genreg", prior=CountingBlur(), n_samples=2, max_iter=2, seed=seed,
                         callback=lambda step, total, _: seen.append((step, total)))
    assert len(result.metadata["auto_options"]["lambda_reg"]["per_split"]) == 2  # splits 0 and 1
    assert len(result.metadata["self_validation"]["split_shared_error_ratios"]) == 2  # splits 1 and 3
    assert seen[-1][0] == seen[-1][1] and [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_choice_only_stops_after_self_validation(ct, single_torch_thread):
    from recon.methods.api import reconstruct_steps
    from recon.methods.selfvalidation import Choice
    from recon.progress import run_steps

    physics, _, y = ct
    prior, whole = CountingBlur(), CountingBlur()
    made = run_steps(reconstruct_steps(y, physics, "ccdf", prior, 2, 3, 0.5, 0, choice_only=True))
    full = reconstruct(y, physics, prior=whole, n_samples=2, steps=3, t0=0.5, seed=0)
    assert isinstance(made, Choice) and made.error_ratio == full.choice.error_ratio is not None
    assert prior.calls > 0 and 2 * prior.calls == whole.calls  # the fit run, not the run on all the data
    with pytest.raises(ValueError, match="choice_only"):
        run_steps(reconstruct_steps(y, physics, "ccdf", prior, 2, 3, 0.5, 0, calibrate=False, choice_only=True))
    seen = []  # t0="validate" chooses its factor after the choice: not run, not counted
    run_steps(reconstruct_steps(y, physics, "ccdf", prior, 2, 3, "validate", 0, choice_only=True),
              callback=lambda step, total, _: seen.append((step, total)))
    assert seen and seen[-1][0] == seen[-1][1]


def test_a_neighbour_that_cannot_be_calibrated_is_left_out(ct, single_torch_thread):
    """A neighbour whose run fails (here: its pseudo-inverse is not finite) gives no ratio: the slice is
    calibrated from the others, not failed."""
    physics, _, y = ct
    options = dict(prior=CountingBlur(), n_samples=2, steps=3, t0=0.5, seed=3)
    huge = torch.full_like(y, 1e38)
    pooled = reconstruct(y, physics, neighbours=[0.7 * y, huge], **options)
    ratios = pooled.metadata["self_validation"]["neighbour_shared_error_ratios"]
    assert ratios[0] is not None and ratios[1] is None
    with pytest.raises(TypeError, match="choice_only"):
        reconstruct(y, physics, choice_only=True, **options)
