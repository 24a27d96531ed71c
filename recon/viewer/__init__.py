"""napari plugin: open results and batch outputs, reconstruct from the viewer, sample data.

The plugin is declared in ``napari.yaml`` (npe2 manifest, registered through the ``napari.manifest``
entry point in ``pyproject.toml``):

- ``reader.py``: reads ``Result`` files and batch outputs (``*.h5``) into mean / uncertainty (std) /
  initial / samples layers;
- ``widget.py``: the "Reconstruct" dock widget, running ``jobs.py``'s Qt-free generator in a
  ``thread_worker`` with progress, live preview and cancel;
- ``sample_data.py``: a phantom with its sparse-view sinogram, and undersampled MRI k-space;
- ``commands.py``: ``recon view FILE.h5``.

Nothing here imports napari, Qt or torch at package import time.
"""
