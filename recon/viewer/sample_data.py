"""napari sample data: a CT phantom with its sparse-view sinogram, and undersampled MRI k-space.

Both measurements are made by the same function the dock widget uses
(:func:`recon.viewer.jobs.simulate_measurement`) and carry the operator settings in their layer
metadata, so selecting the measurement layer and pressing Reconstruct works as it is; the image is
marked as the ground truth, which the widget then scores the result against.
"""

from __future__ import annotations

import numpy as np

from recon.viewer.jobs import (OperatorSettings, ground_truth_metadata, measurement_display, measurement_metadata,
                               simulate_measurement)

SIZE = 128
CT_SETTINGS = OperatorSettings(kind="ct", n_angles=30, noise=0.0)
MRI_SETTINGS = OperatorSettings(kind="mri", acceleration=4, pattern="random", center_fraction=0.08, seed=0)


def shepp_logan(size: int = SIZE) -> np.ndarray:
    """scikit-image's Shepp-Logan phantom (installed with it, no download) at ``size`` x ``size``."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (size, size), anti_aliasing=True).astype(np.float32)


def brain_slice(size: int = SIZE) -> np.ndarray:
    """A held-out axial slice of the MNI152 template (never seen by the shipped MRI prior)."""
    from recon.priors.data import held_out_images

    return np.asarray(held_out_images("mri", size)[0], dtype=np.float32)


def _measurement_layers(image: np.ndarray, settings: OperatorSettings, image_name: str, measurement_name: str) -> list:
    y, _, sigma = simulate_measurement(image, settings)
    y = y[0].numpy()
    return [
        (image, {"name": image_name, "colormap": "gray", "metadata": ground_truth_metadata()}, "image"),
        (measurement_display(y, settings),
         {"name": measurement_name, "colormap": "gray", "metadata": measurement_metadata(y, settings, image.shape[-2:], sigma)},
         "image"),
    ]


def ct_phantom() -> list:
    """Shepp-Logan phantom (128 px) and its 30-view parallel-beam sinogram."""
    return _measurement_layers(shepp_logan(), CT_SETTINGS, "phantom", "phantom sinogram")


def mri_kspace() -> list:
    """A brain slice (128 px) and its 4x randomly undersampled k-space (the layer shows log magnitude)."""
    return _measurement_layers(brain_slice(), MRI_SETTINGS, "brain", "brain k-space")
