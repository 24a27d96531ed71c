"""Speed of ccdf against FBP in the same run, where the time goes, and the PSNR it buys.

Geometries (parallel-beam CT, held-out real head-CT slices ``real_images("ct-head", size)``, simulated
``y = A x + n`` with Gaussian ``n`` of 1 % of ``max |A x|``, the noise level handed to the method):

    128        128 px, 30 views (the README's CT task)
    256        256 px, 30 views
    lodopab    LoDoPaB-CT's geometry on a 360 px grid: 1000 views at (k + 1/2) pi / 1000, 513 bins
               covering the image's diagonal
    fastmri    a fastMRI-like multi-coil geometry: 320 px complex images, 15 coils (smooth synthetic
               sensitivities), 4x random Cartesian mask with 8 % centre; held-out real T1 slices
               (``real_images("mri-head", 320)``), noiseless k-space, the ``mri`` prior; "FBP" is the
               zero-filled SENSE adjoint ``A_dagger`` and "projector" the operator's FFTs and coil products

Every time is printed as a ratio to the FBP time of the same run (FBP is timed once per geometry,
median of 3), so figures from a loaded machine stay comparable. ``--normal auto,exact`` runs each
ccdf twice: with the default data consistency and with the exact ``A^T A`` in every CG iteration
(``recon.methods.data_consistency``). ``--profile`` splits each run into network, projector (A, A^T),
the rest of the data-consistency step (CG / FFT arithmetic), the FFT kernel's one-off build, the t0
probe (its network calls), the initial FBP, intensity mapping and the rest. Calibration (the self-validation run of K >= 2)
is off unless ``--calibrate`` is given; then it is also timed per slice and as ``recon batch`` runs it
by default, once per volume: the middle slice self-validates, the others reuse its choice
(``calibrate=volume``; the reference slice's time and the others' are printed apart).

Usage (docs/speed.md has the figures)::

    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --geometry 128,lodopab --slices 1 --samples 1,8 --profile
    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --geometry lodopab --slices 2 --samples 1 --normal auto,exact --profile
    OMP_NUM_THREADS=1 python benchmarks/bench_speed.py --geometry 128 --samples 1,8 --normal '' --dc exact,fft,tol0.1

``--dc`` runs candidate data-consistency steps (:data:`DC_VARIANTS`) in place of the library's.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def geometry(name: str):
    """``(physics, image size)`` of a geometry named in the module docstring."""
    from operators import ParallelBeamCT

    if name in ("128", "256"):
        size = int(name)
        return ParallelBeamCT(size, n_angles=30), size
    if name == "lodopab":
        size, bins = 360, 513
        angles = (np.arange(1000) + 0.5) * math.pi / 1000
        return ParallelBeamCT(size, angles=angles, n_detectors=bins, detector_spacing=size * math.sqrt(2) / bins), size
    if name == "fastmri":
        from operators import CartesianMRI

        size = 320
        return CartesianMRI(size, acceleration=4, center_fraction=0.08, seed=0, coil_maps=coil_maps(15, size),
                            complex_images=True), size
    raise ValueError(f"unknown geometry {name!r}")


def coil_maps(n_coils: int, size: int) -> np.ndarray:
    """Smooth complex sensitivities of coils around the field of view, sum of squares 1."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    maps = []
    for c in range(n_coils):
        angle = 2 * math.pi * c / n_coils
        cy, cx = 0.7 * math.sin(angle), 0.7 * math.cos(angle)
        maps.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5) * np.exp(1j * (angle + 2 * xx)))
    maps = np.stack(maps)
    return (maps / np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))).astype(np.complex64)


class Timers:
    """Exclusive wall time per category: a timed call inside another is charged to the inner one,
    except inside an ``absorbing`` category (the t0 probe's network calls count as the probe)."""

    absorbing = ("t0 probe", "fft kernel", "fbp")

    def __init__(self):
        self.total: dict[str, float] = {}
        self.stack: list[list] = []

    @contextmanager
    def charge(self, name: str):
        outer = [entry[0] for entry in self.stack if entry[0] in self.absorbing]
        name = outer[0] if outer else name
        start = time.perf_counter()
        self.stack.append([name, 0.0])
        try:
            yield
        finally:
            _, inner = self.stack.pop()
            spent = time.perf_counter() - start
            self.total[name] = self.total.get(name, 0.0) + spent - inner
            if self.stack:
                self.stack[-1][1] += spent

    def wrap(self, owner, attribute: str, name: str):
        original = getattr(owner, attribute)

        def timed(*args, **kwargs):
            with self.charge(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, timed)

    def reset(self):
        self.total = {}


def install_timers() -> Timers:
    from operators import CartesianMRI
    from operators.ct import _CTOperator
    from recon.methods import api, ccdf, data_consistency, denoiser, intensity

    timers = Timers()
    timers.wrap(denoiser.CountingDenoiser, "__call__", "network")
    timers.wrap(_CTOperator, "_project", "projector")
    for attribute in ("A", "A_adjoint"):  # the MRI operator's FFTs and coil products
        timers.wrap(CartesianMRI, attribute, "projector")
    timers.wrap(CartesianMRI, "project", "dc other")
    timers.wrap(data_consistency.DataConsistency, "__call__", "dc other")
    timers.wrap(data_consistency.FFTNormal, "__init__", "fft kernel")
    timers.wrap(ccdf, "estimate_error_level", "t0 probe")
    timers.wrap(api, "_pseudo_inverse", "fbp")
    for method in ("from_estimate", "to_prior", "from_prior", "measurement_to_prior"):
        timers.wrap(intensity.IntensityMap, method, "intensity")
    return timers


#: Data-consistency variants of ``--dc`` (the library's step is "exact" or "fft"; the others are
#: candidates kept here for the record, docs/speed.md has their figures).
DC_VARIANTS = ("exact", "fft", "tol0.1", "tol0.3", "cg3-high", "warm3", "os4", "fft-os4", "fft-os8", "fft-rhs",
               "fft-refreshM", "fft-meanrefreshM")  # M: a whole number of steps, e.g. fft-refresh20


def known_variant(name: str) -> bool:
    """Whether ``--dc`` knows ``name``: one of :data:`DC_VARIANTS`, M standing for a positive whole number."""
    import re

    return any(re.fullmatch(v.replace("M", r"[1-9][0-9]*"), name) for v in DC_VARIANTS)


def dc_variant(name: str):
    """A ``DataConsistency`` class for ``name`` (see :data:`DC_VARIANTS`), to stand in for recon's."""
    from operators import ParallelBeamCT
    from operators._linalg import conjugate_gradient
    from recon.methods.data_consistency import DataConsistency, fft_normal

    class Variant(DataConsistency):
        def __init__(self, physics, y, noise_sigma=0.0, cg_iterations=5, use_project=True):
            normal = "fft" if name.startswith("fft") else "exact"
            # fft-meanrefreshM is the library's own step with refresh=M
            refresh = int(name[len("fft-meanrefresh"):]) if name.startswith("fft-meanrefresh") else None
            super().__init__(physics, y, noise_sigma, cg_iterations, use_project, normal=normal, refresh=refresh)
            if refresh is None:  # its own step below, not the library's
                self.kind = f"cg{self.cg_iterations}-{name}"
            self.calls, self.previous = 0, None

        def normal_op(self, physics, scale=1.0):
            if self.use_fft:
                return fft_normal(self.physics)
            return lambda d: scale * physics.A_adjoint(physics.A(d))

        def __call__(self, z, sigma):
            if name.startswith("fft-meanrefresh"):
                return super().__call__(z, sigma)
            self.calls += 1
            damping = (self.noise_sigma / max(float(sigma), 1e-8)) ** 2
            y = self.y.expand(z.shape[0], *self.y.shape[1:])
            physics, scale, iterations, tol, init = self.physics, 1.0, self.cg_iterations, 1e-6, None
            if "os" in name and type(physics) is ParallelBeamCT:  # ordered subsets: views part::subsets
                subsets = int(name.split("os")[1])
                part = self.calls % subsets
                physics = ParallelBeamCT(self.physics.image_size, angles=self.physics.angles[part::subsets],
                                         n_detectors=self.physics.n_detectors,
                                         detector_spacing=self.physics.detector_spacing,
                                         pixel_size=self.physics.pixel_size)
                y, scale = y[..., part::subsets, :], float(subsets)
            if name.startswith("tol"):
                tol = float(name[3:])
            if name == "cg3-high" and sigma > 0.1:
                iterations = 3
            if name == "warm3":
                iterations, init = 3, self.previous
                if init is not None and init.shape != z.shape:
                    init = None
            normal = self.normal_op(physics, scale)
            if name == "fft-rhs":  # A^T y once, A^T A z by the FFT too: no projection per step
                if getattr(self, "back_projected", None) is None:
                    self.back_projected = physics.A_adjoint(self.y)
                rhs = self.back_projected - normal(z)
            elif name.startswith("fft-refresh"):  # A^T A z = N z + c, the correction c exact every m-th step
                if getattr(self, "back_projected", None) is None:
                    self.back_projected = physics.A_adjoint(self.y)
                if (self.calls - 1) % int(name[len("fft-refresh"):]) == 0 or self.correction.shape != z.shape:
                    self.correction = physics.A_adjoint(physics.A(z)) - normal(z)
                rhs = self.back_projected - normal(z) - self.correction
            else:
                rhs = scale * physics.A_adjoint(y - physics.A(z))
            step = conjugate_gradient(lambda d: normal(d) + damping * d, rhs, init=init, max_iter=iterations, tol=tol)
            self.previous = step
            return z + step

    return Variant


def magnitude(image: np.ndarray) -> np.ndarray:
    """(C, H, W) -> (H, W): the magnitude of a two-channel (complex) image, else its channel."""
    return np.sqrt((image.astype(np.float64) ** 2).sum(0)) if image.shape[0] == 2 else image[0]


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    mse = float(np.mean((np.clip(estimate, 0, 1) - truth) ** 2))
    return 10 * math.log10(1.0 / mse)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--geometry", default="128,lodopab", help="comma-separated: 128, 256, lodopab")
    parser.add_argument("--slices", type=int, default=2, help="held-out slices per geometry")
    parser.add_argument("--samples", default="1,8", help="comma-separated K")
    parser.add_argument("--normal", default="auto", help="comma-separated data-consistency normals: auto, exact, fft")
    parser.add_argument("--dc", default="", help=f"comma-separated candidate steps (after --normal's; --normal '' for none): {', '.join(DC_VARIANTS)}")
    parser.add_argument("--calibrate", action="store_true", help="also time the default run with std calibration")
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    unknown = [v for v in args.dc.split(",") if v and not known_variant(v)]
    if unknown:  # before any work: an unknown name ran the library's step under that label
        parser.error(f"--dc: unknown step(s) {unknown}; known: {', '.join(DC_VARIANTS)}")
    torch.set_num_threads(args.threads)

    from operators.ct import _CTOperator
    from recon.methods import api, data_consistency, denoiser, reconstruct
    from recon.priors.data import real_images

    timers = install_timers() if args.profile else None
    for name in args.geometry.split(","):
        physics, size = geometry(name)
        mri = name == "fastmri"
        prior = "mri" if mri else "ct"
        truths = real_images("mri-head" if mri else "ct-head", size)[: args.slices]
        gen = torch.Generator().manual_seed(0)
        data = []
        for truth in truths:
            image = torch.from_numpy(np.stack([truth, np.zeros_like(truth)]) if mri else truth[None])[None]
            clean = physics.A(image)
            sigma = 0.0 if mri else 0.01 * float(clean.abs().max())  # MRI: noiseless, as bench_real's
            data.append((clean + sigma * torch.randn(clean.shape, generator=gen), sigma, truth))
        fbp_times = []
        for _ in range(3):
            start = time.perf_counter()
            physics.A_dagger(data[0][0])
            fbp_times.append(time.perf_counter() - start)
        fbp = statistics.median(fbp_times)
        fbp_psnr = np.mean([psnr(magnitude(physics.A_dagger(y)[0].numpy()), truth) for y, _, truth in data])
        shape = (f"coils {physics.n_coils}, {physics.acceleration}x" if mri else
                 f"views {physics.n_angles} bins {physics.n_detectors}")
        print(f"[{name}] {type(physics).__name__} {physics.image_size} {shape}: "
              f"FBP {fbp:.3f} s (ratio 1), PSNR {fbp_psnr:.2f} dB, {len(data)} slices", flush=True)
        steps = [n for n in args.normal.split(",") if n] + [f"dc:{v}" for v in args.dc.split(",") if v]
        runs = [(k, normal, False) for k in map(int, args.samples.split(",")) for normal in steps]
        if args.calibrate:
            runs += [(k, normal, mode) for k in map(int, args.samples.split(",")) if k >= 2 for normal in steps
                     for mode in ("auto", "volume")]
        original_dc, original_project = api.DataConsistency, _CTOperator._project
        original_denoise = denoiser.CountingDenoiser.__call__
        for k, normal, calibrate in runs:
            api.DataConsistency = dc_variant(normal[3:]) if normal.startswith("dc:") else original_dc
            data_consistency.DEFAULT_NORMAL = "auto" if normal.startswith("dc:") else normal
            projections = [0]

            def counted(self, t, mode, _inner=_CTOperator._project, _views=getattr(physics, "n_angles", 1)):
                projections[0] += t.shape[0] * t.shape[1] * self.n_angles / _views  # in full-scan slices
                return _inner(self, t, mode)

            _CTOperator._project = counted
            images = [0]

            def evaluated(self, x, sigma, _inner=original_denoise):
                images[0] += x.shape[0]
                return _inner(self, x, sigma)

            denoiser.CountingDenoiser.__call__ = evaluated
            data_consistency._FFT_NORMALS.clear()  # each run pays for its own kernel
            if timers:
                timers.reset()
            times, scores, kinds = [], [], set()
            reference, choice = len(data) // 2, None
            order = [reference] + [i for i in range(len(data)) if i != reference] if calibrate == "volume" else range(len(data))
            for index in order:
                y, sigma, truth = data[index]
                start = time.perf_counter()
                result = reconstruct(y, physics, method="ccdf", prior=prior, n_samples=k, noise_sigma=sigma, seed=index,
                                     device="cpu", calibrate="auto" if calibrate == "volume" else calibrate, choice=choice)
                times.append(time.perf_counter() - start)
                scores.append(psnr(magnitude(result.mean), truth))
                kinds.add(result.metadata["data_consistency"])
                if calibrate == "volume":
                    choice = result.choice
            _CTOperator._project, denoiser.CountingDenoiser.__call__ = original_project, original_denoise
            mean_time = float(np.mean(times))
            line = (f"[{name}] ccdf K={k} normal={normal} ({'/'.join(sorted(kinds))}) calibrate={calibrate}: "
                    f"{mean_time:.1f} s per slice = {mean_time / fbp:.1f} x FBP, "
                    f"{projections[0] / len(data):.0f} projections, {images[0] / len(data):.0f} network images, PSNR {np.mean(scores):.2f} dB "
                    f"({', '.join(f'{s:.2f}' for s in scores)})")
            if calibrate == "volume" and len(times) > 1:
                others = float(np.mean(times[1:]))
                line += (f"\n    reference slice {times[0]:.1f} s = {times[0] / fbp:.1f} x FBP; the others "
                         f"{others:.1f} s = {others / fbp:.1f} x FBP each")
            if timers:
                spent = {key: value / len(data) for key, value in timers.total.items()}
                spent["other"] = mean_time - sum(spent.values())
                line += "\n    per slice: " + ", ".join(f"{key} {value:.2f} s ({100 * value / mean_time:.0f} %)"
                                                        for key, value in sorted(spent.items(), key=lambda kv: -kv[1]))
            print(line, flush=True)


if __name__ == "__main__":
    main()
