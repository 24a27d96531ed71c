"""Diffusion priors: noise-conditional denoisers D(x, sigma) on [0, 1] images.

``load_prior`` returns a :class:`Prior` (a ``deepinv.models.Denoiser``) for a built-in name
("ct", "mri", "natural"), one of our checkpoints, a deepinv pretrained model or a diffusers UNet;
``score`` gives Tweedie's score; ``train`` trains a new prior. Submodules load lazily so that
``import recon.priors`` stays light.
"""

from importlib import import_module

_LAZY = {
    "load_prior": "recon.priors.loading",
    "available_builtins": "recon.priors.loading",
    "known_specs": "recon.priors.loading",
    "Prior": "recon.priors.prior",
    "score": "recon.priors.prior",
    "CheckpointError": "recon.priors.checkpoint",
    "train": "recon.priors.training",
    "export_prior": "recon.priors.training",
    "held_out_images": "recon.priors.data",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'recon.priors' has no attribute {name!r}")
