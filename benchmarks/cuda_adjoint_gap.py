"""How far ASTRA's CUDA projectors are from the CPU ones and from being adjoint (needs a GPU).

Prints, for parallel and fan beam at 64 and 256 px and cone beam at 32^3 and 64^3, the relative
CPU/CUDA difference of A and A^T and the scale-free adjoint gap
``|<Ax, y> - <x, A^T y>| / (||Ax|| ||y||)``, on white noise and on Shepp-Logan. The figures in
``docs/operators.md`` come from this script::

    python benchmarks/cuda_adjoint_gap.py
"""

import argparse

import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from operators import ConeBeamCT, FanBeamCT, ParallelBeamCT


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def adjoint_gap(op, x: torch.Tensor, y: torch.Tensor) -> float:
    ax, aty = op.A(x), op.A_adjoint(y)
    return float(abs((ax * y).sum() - (x * aty).sum()) / (ax.norm() * y.norm()))


def main(argv=None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)  # no options; --help says what it does
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    torch.manual_seed(0)
    makers = {"parallel": lambda n: ParallelBeamCT(n, n_angles=n // 2),
              "fan": lambda n: FanBeamCT(n, n_angles=n, source_distance=2 * n, detector_distance=n)}
    for name, make in makers.items():
        for n in (64, 256):
            op = make(n)
            phantom = torch.from_numpy(resize(shepp_logan_phantom(), (n, n))).float()[None, None]
            for kind, x in (("noise", torch.randn(2, 1, n, n)), ("phantom", phantom.repeat(2, 1, 1, 1))):
                op = op.to("cpu")
                y_cpu = op.A(x)
                back_cpu = op.A_adjoint(y_cpu)
                y = torch.randn_like(y_cpu) if kind == "noise" else op.A(phantom.flip(-1).repeat(2, 1, 1, 1))
                gap_cpu = adjoint_gap(op, x, y)
                op = op.to("cuda")
                print(f"{name} {n} {kind}: A cpu/cuda {relative(op.A(x.cuda()).cpu(), y_cpu):.4f}  "
                      f"A^T cpu/cuda {relative(op.A_adjoint(y_cpu.cuda()).cpu(), back_cpu):.4f}  "
                      f"gap cuda {adjoint_gap(op, x.cuda(), y.cuda()):.2e}  cpu {gap_cpu:.2e}")
    for n in (32, 64):
        op = ConeBeamCT(n, n_angles=90)
        x = torch.randn(1, 1, n, n, n, device="cuda")
        y = torch.randn((1,) + tuple(op.measurement_shape), device="cuda")
        cube = torch.zeros(1, 1, n, n, n, device="cuda")
        cube[..., n // 4:3 * n // 4, n // 4:3 * n // 4, n // 4:3 * n // 4] = 1
        print(f"cone {n}: gap noise {adjoint_gap(op, x, y):.2e}  cube {adjoint_gap(op, cube, op.A(cube.flip(-1))):.2e}")


if __name__ == "__main__":
    main()
