"""The sigma schedule the samplers walk."""

import pytest




def test_schedule_ends_at_sigma_end_and_keeps_the_start():
    """``sigma_end`` moves only the low end: the same t0 starts at the same level, never below the end."""
    from recon.methods.schedule import SIGMA_END, karras_sigmas, sigma_at

    default, short = karras_sigmas(10, 0.4, 0.002, 80.0), karras_sigmas(10, 0.4, 0.002, 80.0, sigma_end=SIGMA_END)
    assert float(short[0]) == pytest.approx(sigma_at(0.4, 0.002, 80.0)) == pytest.approx(float(default[0]))
    assert float(short[-2]) == pytest.approx(SIGMA_END) and float(default[-2]) == pytest.approx(0.002)
    assert float(short[-1]) == 0.0 and bool((short[:-1].diff() < 0).all())
    low = karras_sigmas(4, 0.05, 0.002, 80.0, sigma_end=SIGMA_END)  # start (0.006) below the end: on to sigma_min
    assert float(low[0]) < SIGMA_END and bool((low[:-1].diff() < 0).all()) and float(low[-2]) == pytest.approx(0.002)
    with pytest.raises(ValueError, match="sigma_end"):
        karras_sigmas(4, 0.5, sigma_end=float("nan"))
