"""The prior as methods see it: images of any size reach a network that needs multiples of 8."""

import numpy as np
import pytest
import torch

from recon.methods.denoiser import CountingDenoiser, pad_to_multiple

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def ct_prior():
    from recon.priors import load_prior

    return load_prior("ct")


def smooth_image(height=64, width=64):
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    return (0.5 + 0.25 * torch.sin(2 * torch.pi * xx) * torch.cos(1.5 * torch.pi * yy))[None, None]


def test_an_image_of_any_size_comes_back_in_its_own_size(ct_prior):
    x = torch.rand(2, 1, 60, 52, generator=torch.Generator().manual_seed(0))
    denoise = CountingDenoiser(ct_prior, 1)
    out = denoise(x, 0.1)
    assert out.shape == x.shape
    assert bool(torch.isfinite(out).all())
    assert denoise.images_evaluated == 2 and denoise.per_sample(2) == 1.0


def test_complex_images_of_any_size_keep_the_channel_fold_and_its_count(ct_prior):
    x = torch.rand(3, 2, 60, 52, generator=torch.Generator().manual_seed(1))
    denoise = CountingDenoiser(ct_prior, 2)
    out = denoise(x, torch.full((3,), 0.1))
    assert out.shape == x.shape
    assert denoise.images_evaluated == 6 and denoise.per_sample(3) == 1.0
    # each channel is denoised on its own, as with a size that needs no padding
    alone = CountingDenoiser(ct_prior, 1)(x[:, 1:], 0.1)
    assert torch.allclose(out[:, 1:], alone, atol=1e-5)


def test_padding_and_cropping_agree_with_the_unpadded_call_away_from_the_border(ct_prior):
    image = smooth_image()
    denoise = CountingDenoiser(ct_prior, 1)
    full = denoise(image, 0.05)  # 64 x 64: no padding
    rows, cols = slice(2, 62), slice(6, 58)
    part = denoise(image[..., rows, cols], 0.05)  # 60 x 52: padded to 64 x 56
    assert part.shape[-2:] == (60, 52)
    interior = (slice(None), slice(None), slice(8, -8), slice(8, -8))
    assert float((part - full[..., rows, cols])[interior].abs().max()) < 0.02
    assert denoise.images_evaluated == 2


def test_multiples_already_met_are_passed_through_untouched(ct_prior):
    x = torch.rand(1, 1, 64, 48, generator=torch.Generator().manual_seed(2))
    padded, crop = pad_to_multiple(x, 8)
    assert padded is x and crop is None
    assert torch.equal(CountingDenoiser(ct_prior, 1)(x, 0.1), ct_prior(x, 0.1))


def test_images_too_small_to_reflect_are_replicated():
    x = torch.arange(15.0).reshape(1, 1, 5, 3)
    padded, crop = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (8, 8)
    assert torch.equal(padded[..., crop[0], crop[1]], x)
    assert float(padded[0, 0, 1, 0]) == float(x[0, 0, 0, 0])  # replicated corner, not mirrored


def test_reflect_padding_mirrors_without_repeating_the_edge():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)
    padded, crop = pad_to_multiple(x, 4)  # 3 rows -> 4: one row below, mirrored
    assert padded.shape[-2:] == (4, 4)
    assert torch.equal(padded[0, 0, 3], x[0, 0, 1])
    assert torch.equal(padded[..., crop[0], crop[1]], x)


def test_the_prior_multiple_is_respected():
    calls = []

    class Net:
        channels, multiple = 1, 16

        def __call__(self, x, sigma):
            calls.append(tuple(x.shape[-2:]))
            return x

    out = CountingDenoiser(Net(), 1)(torch.rand(1, 1, 20, 33), 0.1)
    assert calls == [(32, 48)] and out.shape[-2:] == (20, 33)


def test_reconstruct_runs_on_an_mri_60_pixels_wide():
    from operators import CartesianMRI

    from recon.methods import reconstruct

    physics = CartesianMRI((64, 60), acceleration=2, center_fraction=0.2, seed=0)
    x = smooth_image(64, 60)
    result = reconstruct(physics.A(x), physics, method="ccdf", n_samples=1, steps=3, device="cpu", seed=0)
    assert result.mean.shape[-2:] == (64, 60)
    assert bool(torch.isfinite(torch.as_tensor(result.mean)).all())


def test_bfloat16_inference_stays_within_a_tenth_of_a_percent_of_float32(ct_prior):
    """CPU inference in bfloat16 (the default where the CPU computes it natively) changes the
    denoised image by well under 1 %; anything that needs gradients stays float32."""
    x = smooth_image() + 0.1 * torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    exact = CountingDenoiser(ct_prior, 1, precision="float32")
    fast = CountingDenoiser(ct_prior, 1, precision="bfloat16")
    with torch.no_grad():
        assert not exact.uses_bfloat16(x) and fast.uses_bfloat16(x)
        a, b = exact(x, 0.1), fast(x, 0.1)
    assert b.dtype == torch.float32 and b.is_contiguous()
    assert float((a - b).norm() / a.norm()) < 0.005
    assert float((a - b).norm() / a.norm()) > 0  # it did run in bfloat16
    with torch.enable_grad():
        assert not fast.uses_bfloat16(x)
    assert not fast.uses_bfloat16(x.double())
    with pytest.raises(ValueError, match="precision"):
        CountingDenoiser(ct_prior, 1, precision="half")


def test_reconstruct_records_its_network_precision_and_refuses_unknown_ones():
    from recon import reconstruct
    from recon.methods import denoiser as denoiser_module
    from methods_stand_ins import tomography_case

    physics, _, y = tomography_case()
    on_cpu = dict(prior="ct", n_samples=1, steps=2, calibrate=False, device="cpu")
    results = {precision: reconstruct(y, physics, precision=precision, **on_cpu) for precision in ("float32", "bfloat16")}
    for precision, result in results.items():
        assert result.metadata["network_precision"] == precision
    difference = np.abs(results["float32"].mean - results["bfloat16"].mean).max()
    assert 0 < difference < 0.05  # the network did run in bfloat16, and close to float32
    auto = reconstruct(y, physics, **on_cpu)
    assert auto.metadata["network_precision"] == ("bfloat16" if denoiser_module.native_bfloat16() else "float32")
    assert reconstruct(y, physics, method="fbp").metadata["network_precision"] is None
    with pytest.raises(ValueError, match="precision"):
        reconstruct(y, physics, prior="ct", precision="float16")


def test_a_bfloat16_call_leaves_the_priors_float32_results_bit_identical(ct_prior):
    """The weights are in channels-last order only during a bfloat16 call: float32 afterwards gives
    the same bits as before, whatever ran in between (batch and the viewer share one prior)."""
    x = smooth_image() + 0.1 * torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = CountingDenoiser(ct_prior, 1, precision="float32")(x, 0.1)
        CountingDenoiser(ct_prior, 1, precision="bfloat16")(x, 0.1)
        after = CountingDenoiser(ct_prior, 1, precision="float32")(x, 0.1)
    assert torch.equal(before, after)
    assert all(p.is_contiguous() for p in ct_prior.parameters())


def test_cpu_inference_in_channels_last_matches_the_prior_to_float32_rounding(ct_prior):
    """CPU inference runs in oneDNN's channels-last layout (faster), with the same values as the
    prior's own call to float32 rounding; the prior's weights are left in their own order."""
    x = smooth_image() + 0.1 * torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(4))
    denoise = CountingDenoiser(ct_prior, 1, precision="float32")
    with torch.no_grad():
        assert denoise.channels_last(x)
        own, ours = ct_prior(x, torch.full((2,), 0.1)), denoise(x, 0.1)
    assert ours.is_contiguous() and float((own - ours).abs().max()) < 1e-4
    assert all(p.is_contiguous() for p in ct_prior.parameters())
    with torch.enable_grad():
        assert not denoise.channels_last(x)  # training and genreg's gradients keep the prior's layout


class _ViewsItsInput(torch.nn.Module):
    """A network that flattens with ``view``, which a channels-last tensor refuses."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x, sigma):
        y = self.conv(x)
        return y.view(y.shape[0], -1).view(y.shape).mean(1, keepdim=True) - 0 * sigma.reshape(-1, 1, 1, 1)


def test_a_network_that_cannot_run_channels_last_runs_in_its_own_layout():
    network = _ViewsItsInput()
    x = torch.randn(2, 1, 16, 16)
    denoise = CountingDenoiser(network, 1, precision="float32")
    with torch.no_grad():
        out = denoise(x, 0.1)
        assert torch.allclose(out, network(x, torch.full((2,), 0.1)))
    assert denoise.layout_fallback and not denoise.channels_last(x)
    assert all(p.is_contiguous() for p in network.parameters())
