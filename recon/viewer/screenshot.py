"""Make the documentation's screenshot: the viewer after a reconstruction run from its dock widget.

Run under an X server (Xvfb is enough)::

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python -m recon.viewer.screenshot \\
        --out docs/figures/viewer.png --method ccdf --prior ct --steps 20 --samples 8

It opens the plugin's "Phantom + sparse-view sinogram" sample, checks that the Reconstruct widget
picked the sinogram layer, runs the job exactly as a user would (thread worker, live preview,
progress) and saves the whole window with the phantom, the posterior mean and its uncertainty side
by side, each whole in its grid cell.
"""

from __future__ import annotations

import argparse
import logging
import time

logger = logging.getLogger(__name__)


def make_screenshot(out: str, method: str = "ccdf", prior: str = "ct", steps: int = 20, samples: int = 8,
                    timeout_s: float = 600.0, size: tuple = (1400, 800), viewer=None) -> dict:
    """Run the sample reconstruction in a real viewer and save the window to ``out``; returns a summary.

    ``viewer``: a shown viewer to use (tests pass napari's fixture); by default a new one, closed after.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    from recon.viewer.commands import show_side_by_side
    from recon.viewer.widget import ReconstructWidget

    own_viewer = viewer is None
    viewer = napari.Viewer(title="diffrecon", show=True) if own_viewer else viewer
    try:
        viewer.window._qt_window.resize(*size)
        layers = viewer.open_sample("diffrecon", "ct_phantom")
        phantom, sinogram = layers
        widget = ReconstructWidget(viewer)
        viewer.window.add_dock_widget(widget, name="Reconstruct", area="right")
        if widget.layer.value != sinogram.name:
            raise RuntimeError(f"the widget picked {widget.layer.value!r} as its input, not the sinogram")
        widget.method.value, widget.prior.value = method, prior
        widget.steps.value, widget.samples.value = steps, samples
        widget.run()
        if widget.worker is None:
            raise RuntimeError(f"the widget did not start: {widget.status.value}")
        started = time.monotonic()
        while widget.worker is not None:
            QApplication.processEvents()
            time.sleep(0.05)
            if time.monotonic() - started > timeout_s:
                widget.cancel()
                raise TimeoutError(f"the reconstruction took longer than {timeout_s} s")
        result = widget.last_result
        if result is None:
            raise RuntimeError(f"the reconstruction did not finish: {widget.status.value}")
        _close_notification_toasts(viewer)
        for _ in range(10):
            QApplication.processEvents()
        show_side_by_side(viewer)  # the widget did on its first result; again for the window's final size
        viewer.screenshot(path=out, canvas_only=False, flash=False)
        from recon.viewer.jobs import psnr

        summary = {"out": out, "method": method, "prior": prior, "steps": steps, "samples": samples,
                   "psnr_mean_vs_phantom": psnr(result.mean.squeeze(), phantom.data),
                   "seconds": time.monotonic() - started, "status": widget.status.value,
                   "layers": [layer.name for layer in viewer.layers if layer.visible]}
        logger.info("%s", summary)
        return summary
    finally:
        if own_viewer:
            viewer.close()


def _close_notification_toasts(viewer) -> None:
    """Hide napari's pop-up notifications (e.g. a deprecation warning) so they don't cover the figure."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/figures/viewer.png")
    parser.add_argument("--method", default="ccdf")
    parser.add_argument("--prior", default="ct")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(make_screenshot(args.out, args.method, args.prior, args.steps, args.samples))


if __name__ == "__main__":
    main()
