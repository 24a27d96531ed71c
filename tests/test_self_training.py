"""Steering by denoising (``self_training.py``): the adapters learn the scan's reconstruction, nothing else."""

import hashlib
import statistics

import numpy as np
import pytest
import torch

from methods_stand_ins import tomography_case
from recon.methods import reconstruct
from recon.methods.adapters import merged
from recon.methods.self_training import patch_size, train_adapters
from recon.methods.selfvalidation import Choice, over_volume, std_scale
from recon.methods.steering import DEFAULT_RANK, DEFAULT_SIGMA_FLOOR, DEFAULT_START_FACTOR, AdaptOptions
from recon.priors import load_prior
from recon.progress import run_steps

QUICK = dict(train_steps=12, batch=4)  # train_adapters itself takes a rank and floor: for_operator gives them


@pytest.fixture(scope="module")
def prior():
    return load_prior("ct")


@pytest.fixture(scope="module")
def ct():
    return tomography_case()


def _checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _denoising_error(prior, image: torch.Tensor, sigma: float) -> float:
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return float((prior(image + sigma * noise, torch.tensor([sigma])) - image).pow(2).mean())


def test_training_teaches_the_prior_the_image_and_leaves_the_shipped_weights_alone(prior, ct, single_torch_thread):
    _, x, _ = ct
    before = _checksum(prior)
    options = AdaptOptions(rank=4, train_steps=40, batch=4, sigma_floor=0.05)
    adapted, parameters, report = run_steps(train_adapters(prior, x, options, seed=0))
    assert _checksum(prior) == before
    assert report["objective"] == "denoising" and report["backward_passes"] == 160 and report["patch"] == 32
    # the image it was taught denoises better at a level above the floor
    assert _denoising_error(merged(adapted), x, 0.3) < 0.8 * _denoising_error(prior, x, 0.3)
    again, _, _ = run_steps(train_adapters(prior, x, options, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(adapted.state_dict().values(), again.state_dict().values()))


def test_below_the_floor_the_adapted_prior_is_held_to_the_shipped_one(prior, ct, single_torch_thread):
    """With every training level below ``sigma_floor`` (up to 1 in 10^5 of the log range above it), the
    targets are the shipped prior's own outputs."""
    _, x, _ = ct
    held = AdaptOptions(rank=4, train_steps=30, batch=4, sigma_floor=6.0, sigma_ceiling=6.0001)
    free = AdaptOptions(rank=4, train_steps=30, batch=4, sigma_floor=0.0, sigma_ceiling=6.0)
    moved = {}
    for name, options in (("held", held), ("free", free)):
        adapted, _, _ = run_steps(train_adapters(prior, x, options, seed=0))
        noisy = x + 0.5 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            moved[name] = float((merged(adapted)(noisy, torch.tensor([0.5])) - prior(noisy, torch.tensor([0.5]))).abs().max())
    assert moved["held"] < 0.25 * moved["free"]


def test_patches_fit_the_image_and_the_network(ct):
    _, x, _ = ct
    assert patch_size(x, 64, 8) == 32 and patch_size(x, 20, 8) == 16 and patch_size(x[..., :5, :], 64, 8) == 0


def test_reconstruct_steers_by_denoising_by_default_deterministically(prior, ct, single_torch_thread):
    physics, _, y = ct
    seen = []
    runs = [reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt={**QUICK},
                        callback=lambda step, total, _: seen.append((step, total)) if not runs_done else None)
            for runs_done in range(2)]
    assert np.array_equal(runs[0].samples, runs[1].samples)
    steering = runs[0].metadata["self_validation"]["steering"]
    assert steering["objective"] == "denoising" and steering["kept"] is True and steering["train_steps"] == 12
    assert runs[0].metadata["self_validation"]["backward_images"] == 48
    # the std's ratio: the steered run's, not below the unsteered run's shared error (steered_error_ratio)
    ratios = runs[0].metadata["self_validation"]
    assert ratios["shared_error_ratio"] == max(steering["shared_error_ratio_steered"],
                                               steering["shared_error_ratio_unsteered"] * steering["spread_ratio"])
    totals = {total for _, total in seen}
    # one count over the fit run, the training, the steered fit run and the final run, never backwards
    assert totals == {16} and [s for s, _ in seen] == sorted(s for s, _ in seen) and seen[-1] == (16, 16)
    off = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3)
    assert not np.array_equal(off.samples, runs[0].samples)



def test_the_rank_floor_and_start_follow_the_data_consistency_unless_set(prior, ct, single_torch_thread):
    assert AdaptOptions().for_operator(exact_projection=True).sigma_floor == DEFAULT_SIGMA_FLOOR["projection"]
    assert AdaptOptions().for_operator(exact_projection=False).sigma_floor == DEFAULT_SIGMA_FLOOR["cg"]
    assert AdaptOptions(sigma_floor=0.3).for_operator(exact_projection=False).sigma_floor == 0.3
    for step, exact in (("projection", True), ("cg", False)):
        assert AdaptOptions().for_operator(exact_projection=exact).start_factor == DEFAULT_START_FACTOR[step]
        assert AdaptOptions(start_factor=1.2).for_operator(exact_projection=exact).start_factor == 1.2
        assert AdaptOptions().for_operator(exact_projection=exact).rank == DEFAULT_RANK[step]
        assert AdaptOptions(rank=2).for_operator(exact_projection=exact).rank == 2
    assert DEFAULT_RANK["cg"] != DEFAULT_RANK["projection"]
    physics, _, y = ct  # CT: a CG step
    run = reconstruct(y, physics, prior=prior, n_samples=2, steps=3, t0=0.4, adapt={**QUICK, "train_steps": 2})
    report = run.metadata["self_validation"]["steering"]
    assert report["sigma_floor"] == DEFAULT_SIGMA_FLOOR["cg"] and report["rank"] == DEFAULT_RANK["cg"]
    assert run.choice.adapt_rank == DEFAULT_RANK["cg"]
    for unset in ({"rank": 4}, {"sigma_floor": 0.05}):
        with pytest.raises(ValueError, match="rank and a sigma_floor"):
            run_steps(train_adapters(prior, torch.zeros(1, 1, 32, 32), AdaptOptions(**QUICK, **unset), seed=0))


def test_a_kept_adapted_prior_starts_from_more_noise_and_gives_that_to_the_volume(prior, ct, single_torch_thread):
    physics, _, y = ct
    common = dict(prior=prior, n_samples=2, steps=4, seed=3)
    longer = reconstruct(y, physics, adapt={**QUICK, "train_steps": 4}, **common)
    auto = reconstruct(y, physics, adapt={**QUICK, "train_steps": 4, "start_factor": 1.0}, **common)
    assert longer.choice.start_factor == DEFAULT_START_FACTOR["cg"] == longer.metadata["t0_start_factor"]
    assert "t0_start_factor" not in auto.metadata and auto.choice.start_factor == 1.0
    # the same adapters (the training does not depend on the start), so the same auto t0 before the factor
    assert longer.metadata["t0"] == pytest.approx(auto.metadata["t0"] * DEFAULT_START_FACTOR["cg"])
    shared = reconstruct(0.9 * y, physics, choice=Choice.from_record(*longer.choice.record()), **common)
    alone = reconstruct(0.9 * y, physics, choice=Choice.from_record(*auto.choice.record()), **common)
    assert shared.metadata["t0"] == pytest.approx(alone.metadata["t0"] * DEFAULT_START_FACTOR["cg"])
    unsteered = reconstruct(y, physics, **common)
    assert "t0_start_factor" not in unsteered.metadata


def test_genreg_steers_by_denoising_and_refuses_the_misfit_objective(prior, ct, single_torch_thread):
    physics, _, y = ct
    options = dict(method="genreg", prior=prior, n_samples=2, seed=1, max_iter=4, lambda_reg=0.1)
    with pytest.raises(ValueError, match="misfit"):
        reconstruct(y, physics, adapt={"objective": "misfit"}, **options)
    steered = reconstruct(y, physics, adapt={**QUICK}, **options)
    plain = reconstruct(y, physics, **options)
    assert steered.metadata["self_validation"]["steering"]["objective"] == "denoising"
    assert steered.choice.adapters and not np.array_equal(plain.samples, steered.samples)


def test_training_takes_complex_images_and_images_smaller_than_a_patch(prior, single_torch_thread):
    """A 2-channel (complex MRI) image trains a 1-channel prior on its real and imaginary parts; an image
    smaller than one network block is padded to it."""
    tiny = torch.rand(1, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    float32 = AdaptOptions(rank=4, train_steps=3, batch=2, sigma_floor=0.05)
    adapted, _, report = run_steps(train_adapters(prior, tiny, float32, seed=0, precision="float32"))
    assert report["patch"] == 8 and report["precision"] == "float32" and report["backward_passes"] == 6
    with torch.no_grad():
        assert torch.isfinite(merged(adapted)(torch.rand(1, 1, 8, 8), torch.tensor([0.1]))).all()


def test_the_adapters_never_see_the_held_out_values(prior, ct, scored_estimates, single_torch_thread):
    """Changing only the held-out entries of y changes neither the trained adapters nor the fit runs:
    the gate that scores them on the held-out entries stays a fair test."""
    from operators.foreign import as_operator
    from recon.methods.holdout import split_seed

    physics, _, y = ct
    seen = scored_estimates
    fixed = dict(intensity_range=(0.0, 1.0), noise_sigma=0.01)  # estimated from y, they would read the held-out values
    options = dict(prior=prior, n_samples=2, steps=3, t0=0.5, seed=5, adapt={**QUICK}, **fixed)
    made = reconstruct(y, physics, **options)
    held = as_operator(physics, y).held_out_entries(0.125, torch.Generator().manual_seed(split_seed(5)))
    tampered = reconstruct(y + 100.0 * held.to(y.dtype), physics, **options)
    assert len(seen) == 4 and torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])  # unsteered, steered
    assert all(torch.equal(a, b) for a, b in zip(made.choice.adapters, tampered.choice.adapters))


def test_neighbours_join_the_training_and_count_in_the_progress(prior, ct, single_torch_thread):
    """Other slices of the volume (here the same scan, scaled, and with its own operator) train the
    adapters beside this slice: the adapters change, deterministically, and the progress counts their runs."""
    physics, _, y = ct
    options = dict(prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, adapt={**QUICK})
    alone = reconstruct(y, physics, **options)
    seen = []
    runs = [reconstruct(y, physics, neighbours=[0.8 * y, (y, physics, 0.01)],
                        callback=lambda step, total, _: seen.append((step, total)) if not done else None, **options)
            for done in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(runs[0].choice.adapters, runs[1].choice.adapters))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0].choice.adapters, alone.choice.adapters))
    assert runs[0].metadata["self_validation"]["steering"]["training_images"] == 3
    assert alone.metadata["self_validation"]["steering"]["training_images"] == 1
    first = reconstruct(0.8 * y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=4, calibrate=False)
    assert (runs[0].metadata["validation_network_images"] - alone.metadata["validation_network_images"]
            == 4 * round(first.metadata["n_network_evals"] * 2))  # the neighbours' first and calibration runs, 2 samples each
    # fit run, two neighbours' first runs, training, steered fit run, their two calibration runs, final
    # run: one count, never backwards
    assert {total for _, total in seen} == {8 * 4} and [s for s, _ in seen] == sorted(s for s, _ in seen)


def test_a_second_round_trains_on_what_the_first_rounds_adapted_prior_reconstructs(prior, ct, single_torch_thread):
    """``rounds=2``: the neighbours are reconstructed again with the first round's adapters (from its start
    factor) and the adapters trained afresh on those images and the steered fit run; the round that
    predicts the held-out data best is kept. Deterministic, twice the backward passes, and the progress
    counts every run."""
    physics, _, y = ct
    options = dict(prior=prior, n_samples=2, steps=4, t0=0.4, seed=3)
    others = [0.8 * y, (y, physics, 0.01)]
    once = reconstruct(y, physics, neighbours=others, adapt={**QUICK, "mode": "on"}, **options)
    seen = []
    twice = [reconstruct(y, physics, neighbours=others, adapt={**QUICK, "mode": "on", "rounds": 2},
                         callback=lambda step, total, _: seen.append((step, total)) if not done else None, **options)
             for done in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(twice[0].choice.adapters, twice[1].choice.adapters))
    steering, first = twice[0].metadata["self_validation"]["steering"], once.metadata["self_validation"]["steering"]
    assert steering["rounds"] == 2 and steering["training_images"] == 3
    # the round whose fit run predicts the held-out data best is kept; the first round is the one-round run
    assert steering["heldout_misfit_by_round"][0] == first["heldout_misfit_steered"]
    assert steering["heldout_misfit_steered"] == min(steering["heldout_misfit_by_round"])
    same_as_once = all(torch.equal(a, b) for a, b in zip(twice[0].choice.adapters, once.choice.adapters))
    assert same_as_once == (steering["round_chosen"] == 1)
    assert steering["backward_passes"] == 2 * first["backward_passes"] == 2 * 12 * 4
    assert len(steering["loss_last_steps_by_round"]) == 2
    # fit run, then per round: two neighbours' runs, training, steered fit run; their calibration runs; final run
    assert {total for _, total in seen} == {(1 + 2 * 4 + 2 + 1) * 4} and [s for s, _ in seen] == sorted(s for s, _ in seen)
    with pytest.raises(ValueError, match="rounds"):
        reconstruct(y, physics, adapt={"rounds": 0}, **options)


def test_a_volume_whose_adapters_the_gate_rejects_is_calibrated_by_its_neighbours(prior, ct, single_torch_thread):
    """Where the gate keeps the shipped prior (here: adapters that barely move, lr 1e-12), the volume's
    std comes from the median ratio over the neighbours' own splits, as without steering: the same ratios,
    the same scale, the same samples; the progress counts every run up front and never goes backwards."""
    physics, _, y = ct
    base = dict(prior=prior, n_samples=2, steps=4, t0=0.4, seed=3)
    others = [0.8 * y, (y, physics, 0.01)]
    unsteered = reconstruct(y, physics, neighbours=others, **base)
    seen = []
    rejected = reconstruct(y, physics, neighbours=others, adapt={**QUICK, "mode": "auto", "lr": 1e-12},
                           callback=lambda step, total, _: seen.append((step, total)), **base)
    record = rejected.metadata["self_validation"]
    assert record["steering"]["kept"] is False and rejected.choice.adapters is None
    assert record["neighbour_shared_error_ratios"] == unsteered.metadata["self_validation"]["neighbour_shared_error_ratios"]
    assert None not in record["neighbour_shared_error_ratios"]
    assert record["shared_error_ratio"] == unsteered.metadata["self_validation"]["shared_error_ratio"]
    assert rejected.metadata["std_scale"] == unsteered.metadata["std_scale"]
    assert np.array_equal(rejected.samples, unsteered.samples)
    assert [s for s, _ in seen] == sorted(s for s, _ in seen) and seen[-1][0] == seen[-1][1]
    # fit run, two first runs, training, steered fit run, two calibration runs, final run
    assert {total for _, total in seen} == {8 * 4}


def test_a_steered_volume_floors_its_std_by_the_volumes_unadapted_ratio(prior, ct, single_torch_thread):
    """Where the adapters are kept, the neighbours still run on their own splits with the unadapted prior:
    their ratios are the unsteered volume's, and the steered std's floor takes the volume's median
    unadapted ratio instead of this slice's alone."""
    physics, _, y = ct
    base = dict(prior=prior, n_samples=2, steps=4, t0=0.4, seed=3)
    others = [0.8 * y, (y, physics, 0.01)]
    unsteered = reconstruct(y, physics, neighbours=others, **base)
    steered = reconstruct(y, physics, neighbours=others, adapt={**QUICK, "mode": "on"}, **base)
    record, volume_record = steered.metadata["self_validation"], unsteered.metadata["self_validation"]
    steering = record["steering"]
    assert steered.choice.adapters is not None
    assert record["neighbour_shared_error_ratios"] == volume_record["neighbour_shared_error_ratios"]
    assert steering["shared_error_ratio_unsteered"] == volume_record["shared_error_ratio_slice"]
    assert record["volume_shared_error_ratio_unsteered"] == pytest.approx(volume_record["shared_error_ratio"])
    floor = record["volume_shared_error_ratio_unsteered"] * steering["spread_ratio"]
    assert record["shared_error_ratio"] == pytest.approx(max(steering["shared_error_ratio_steered"], floor))
    assert steered.choice.error_ratio == pytest.approx(record["shared_error_ratio"])
    slice_alone = max(steering["shared_error_ratio_steered"], steering["shared_error_ratio_unsteered"] * steering["spread_ratio"])
    assert record["shared_error_ratio"] != pytest.approx(slice_alone)  # here the pooling moves it


def test_an_uncalibrated_steered_volume_counts_no_calibration_runs(prior, ct, single_torch_thread):
    """With ``calibrate=False`` the neighbours only train the adapters: no calibration runs are counted
    or run, and the progress total never changes."""
    physics, _, y = ct
    seen = []
    made = reconstruct(y, physics, prior=prior, n_samples=2, steps=4, t0=0.4, seed=3, calibrate=False,
                       neighbours=[0.8 * y, (y, physics, 0.01)], adapt={**QUICK, "mode": "on"},
                       callback=lambda step, total, _: seen.append((step, total)))
    # fit run, two first runs, training, steered fit run, final run
    assert {total for _, total in seen} == {6 * 4} and seen[-1][0] == seen[-1][1]
    assert "neighbour_shared_error_ratios" not in made.metadata["self_validation"]


def test_over_volume_pools_an_adapted_choices_floor_and_an_unadapted_choices_ratio():
    """The median over the volume replaces the slice's own unadapted ratio: the ratio itself where no
    adapters were kept, the floor ``q_u v_u / v_s`` where they were; the adapted ratio stands where
    it is above the pooled floor. A choice without its floor's figures is left as it is."""
    steering = {"shared_error_ratio_steered": 0.5, "shared_error_ratio_unsteered": 1.0, "spread_ratio": 2.0}
    adapted = Choice(prior=None, prior_label="p", std_scale=std_scale(2.0, 8), error_ratio=2.0,
                     metadata={"steering": steering}, adapters=[torch.zeros(1)])
    pooled = over_volume(adapted, [3.0, 4.0, None], 8)
    assert pooled.error_ratio == pytest.approx(statistics.median([1.0, 3.0, 4.0]) * 2.0)
    assert pooled.std_scale == pytest.approx(std_scale(pooled.error_ratio, 8))
    assert pooled.metadata["volume_shared_error_ratio_unsteered"] == 3.0
    assert over_volume(adapted, [0.1, 0.2], 8).error_ratio == pytest.approx(0.5)  # q_s above 0.2 * 2
    unadapted = Choice(prior=None, prior_label="p", std_scale=std_scale(1.0, 8), error_ratio=1.0)
    assert over_volume(unadapted, [3.0, 4.0], 8).error_ratio == pytest.approx(3.0)
    bare = Choice(prior=None, prior_label="p", std_scale=1.0, error_ratio=2.0, adapters=[torch.zeros(1)])
    assert over_volume(bare, [3.0], 8).error_ratio == 2.0


@pytest.mark.parametrize("neighbours, options, match", [
    ("y", dict(adapt={**QUICK}), "list of measurements"),
    ([None], dict(adapt="off", calibrate=False), "does neither"),  # nothing trained, nothing calibrated
    ([None], dict(adapt="off", n_samples=1), "does neither"),
    (["same"], dict(adapt={**QUICK, "objective": "misfit"}), "denoising"),
    (["short"], dict(adapt={**QUICK}), r"neighbours\[0\]"),
    (["nan"], dict(adapt="off"), r"neighbours\[0\].*NaN"),
    ([("y",)], dict(adapt={**QUICK}), "tuple must be"),
    ([None, None], dict(adapt="off", seed=2**64 - 2), "seed"),  # the neighbours' seeds would pass torch's range
])
def test_bad_neighbours_are_refused_before_any_work(prior, ct, neighbours, options, match):
    physics, _, y = ct
    values = {"y": y, "same": y, "short": y[..., :5], "nan": y * float("nan"), None: y}
    given = values["y"] if neighbours == "y" else [tuple(values[v] for v in n) if isinstance(n, tuple) else values[n]
                                                   for n in neighbours]
    steps = []
    with pytest.raises((ValueError, TypeError), match=match):
        reconstruct(y, physics, prior=prior, neighbours=given, callback=lambda *step: steps.append(step),
                    **{"n_samples": 2, **options})
    assert steps == []
