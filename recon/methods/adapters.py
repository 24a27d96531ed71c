"""Low-rank adapters (LoRA, Hu et al. 2021) on a prior's convolutions, for test-time adaptation.

Steering (``steering.py``) adapts a prior to one scan. Training all of its weights on one measurement
overfits (the measurement has fewer values than the network has weights); a rank-``r`` update per
convolution has a few thousand parameters and starts as the identity, so the adapted prior begins as
the shipped one and moves only as far as the data pull it.

Each ``Conv2d`` ``W`` becomes ``W + up @ down``: ``down`` a convolution with ``W``'s kernel, stride and
padding to ``r`` channels, ``up`` a 1x1 convolution back, initialised to zero. :func:`merged` folds
the update into plain convolution weights, so sampling with the adapted prior costs what the shipped
prior costs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class LowRankConv2d(nn.Module):
    """``conv(x) + up(down(x))``; ``conv`` frozen, ``up`` starts at zero."""

    def __init__(self, conv: nn.Conv2d, rank: int, generator: torch.Generator):
        super().__init__()
        self.conv = conv
        self.down = nn.Conv2d(conv.in_channels, rank, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                              bias=False).to(conv.weight)
        self.up = nn.Conv2d(rank, conv.out_channels, 1, bias=False).to(conv.weight)
        fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
        with torch.no_grad():  # seeded, so a seed fixes the adapted prior
            self.down.weight.copy_(torch.randn(self.down.weight.shape, generator=generator).to(conv.weight)
                                   / fan_in**0.5)
            self.up.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.up(self.down(x))

    def merged_weight(self) -> torch.Tensor:
        """``W + up @ down`` as one kernel of ``conv``'s shape."""
        update = torch.einsum("or,rikl->oikl", self.up.weight[:, :, 0, 0], self.down.weight)
        return self.conv.weight + update


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros"


def adaptable(prior: nn.Module) -> bool:
    """Whether ``prior`` has convolutions an adapter can attach to."""
    return isinstance(prior, nn.Module) and any(_adaptable(module) for module in prior.modules())


def with_adapters(prior: nn.Module, rank: int, seed: int = 0) -> tuple[nn.Module, list[nn.Parameter]]:
    """A copy of ``prior`` whose convolutions carry rank-``rank`` adapters, and the adapters' parameters.

    The copy's own weights stay frozen; ``prior`` itself is never modified.
    """
    adapted = copy.deepcopy(prior)
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    generator = torch.Generator().manual_seed(seed)
    targets = [(name, module) for name, module in adapted.named_modules() if _adaptable(module)]
    if not targets:
        raise ValueError(f"prior {type(prior).__name__} has no Conv2d layers to adapt")
    parameters = []
    for name, conv in targets:
        parent_name, _, child = name.rpartition(".")
        parent = adapted.get_submodule(parent_name) if parent_name else adapted
        wrapper = LowRankConv2d(conv, rank, generator)
        setattr(parent, child, wrapper)
        for parameter in (wrapper.down.weight, wrapper.up.weight):
            parameter.requires_grad_(True)
            parameters.append(parameter)
    return adapted, parameters


def merged(adapted: nn.Module) -> nn.Module:
    """A copy of ``adapted`` with each adapter folded into its convolution (same outputs, plain convolutions)."""
    plain = copy.deepcopy(adapted)
    wrappers = [(name, module) for name, module in plain.named_modules() if isinstance(module, LowRankConv2d)]
    for name, wrapper in wrappers:
        parent_name, _, child = name.rpartition(".")
        parent = plain.get_submodule(parent_name) if parent_name else plain
        conv = wrapper.conv
        with torch.no_grad():
            conv.weight.copy_(wrapper.merged_weight())
        setattr(parent, child, conv)
    for parameter in plain.parameters():
        parameter.requires_grad_(False)
    return plain.eval()


def adapter_count(parameters) -> int:
    """Number of adapter values (for the metadata)."""
    return sum(int(p.numel()) for p in parameters)
