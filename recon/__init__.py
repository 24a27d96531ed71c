"""diffrecon: reconstruct images from indirect measurements with diffusion priors.

The public API is re-exported here lazily so that ``import recon`` stays fast (no torch import until
something needs it)::

    import recon
    prior = recon.load_prior("ct")
    result = recon.reconstruct(y, physics, method="ccdf", prior=prior)
    result.save("slice.h5")
"""

from importlib import import_module

__version__ = "0.32.0"

_LAZY = {
    "load_prior": "recon.priors",
    "reconstruct": "recon.methods",
    "reconstruct_steps": "recon.methods",
    "reconstruct_volume": "recon.methods",
    "Result": "recon.result",
    "load_result": "recon.result",
    "uncertainty": "recon.uncertainty",
    "batch": "recon.batch",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        module = import_module(_LAZY[name])
        return module if module.__name__ == f"recon.{name}" else getattr(module, name)
    raise AttributeError(f"module 'recon' has no attribute {name!r}")
