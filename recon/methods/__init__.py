"""Reconstruction methods: ``reconstruct`` and the methods it dispatches to.

``fbp`` and ``tv`` (baselines.py), ``ccdf`` (ccdf.py), ``diffusion`` (diffusion.py), ``genreg``
(genreg.py); all share the sigma schedule (schedule.py) and data consistency (data_consistency.py).
"""

from recon.methods.api import METHODS, PRIOR_METHODS, method_options, reconstruct

__all__ = ["reconstruct", "METHODS", "PRIOR_METHODS", "method_options"]
