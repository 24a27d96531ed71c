"""Reconstruction methods: ``reconstruct`` (``reconstruct_steps``, step by step) and the methods it dispatches to.

``fbp`` and ``tv`` (baselines.py), ``ccdf`` (ccdf.py), ``diffusion`` (diffusion.py), ``genreg``
(genreg.py), each a generator of progress steps that returns its samples; all share the sigma schedule (schedule.py) and data consistency (data_consistency.py).
``reconstruct_volume`` (volume.py) reconstructs a volume's slices with one self-validation, as ``recon batch`` does a file.
Each method is one record in registry.py. The names below are imported when first used, so that
``recon.methods.registry`` can be read without importing torch.
"""

from importlib import import_module

_LAZY = {"reconstruct": "api", "reconstruct_steps": "api", "reconstruct_volume": "volume", "method_options": "api",
         "METHODS": "registry", "PRIOR_METHODS": "registry"}

__all__ = ["reconstruct", "reconstruct_steps", "reconstruct_volume", "METHODS", "PRIOR_METHODS", "method_options"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"recon.methods.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'recon.methods' has no attribute {name!r}")
