"""What the tests of ``recon.methods`` share: a stand-in prior that counts its calls, and a small CT case.

Counting network calls is how the tests check "before any work"; deepinv's own operator keeps each
reconstruction to a fraction of a second.
"""

import deepinv as dinv
import torch


class CountingBlur(torch.nn.Module):
    """Stand-in prior: a box blur whose width grows with sigma; counts network calls."""

    def __init__(self, channels=1):
        super().__init__()
        self.channels = channels
        self.metadata = {"name": "counting-blur", "checksum": "0" * 64, "sigma_min": 0.002, "sigma_max": 80.0}
        self.calls = 0

    def forward(self, x, sigma):
        self.calls += 1
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        k = max(1, int(round(min(s, 1.0) * 16)) | 1)
        return x if k == 1 else torch.nn.functional.avg_pool2d(x, k, 1, k // 2, count_include_pad=False)


N = 32


def tomography_case():
    """(physics, x, y): deepinv's 20-view tomography of an N x N two-block image, and its measurement."""
    torch.manual_seed(0)
    physics = dinv.physics.Tomography(angles=20, img_width=N, circle=False, normalize=True)
    x = torch.zeros(1, 1, N, N)
    x[..., 8:24, 10:22] = 0.8
    x[..., 12:16, 12:18] = 0.3
    return physics, x, physics.A(x)
