"""``recon view FILE.h5 ...``: open results or batch outputs in napari with this package's reader."""

from __future__ import annotations

from pathlib import Path
from typing import List

PLUGIN = "diffrecon"


def check_files(paths) -> List[str]:
    """Return the paths as strings; ``ValueError`` naming the first one that is not ours."""
    from recon.viewer.reader import file_layout, nothing_to_show, unreadable

    if not paths:
        raise ValueError("give at least one result file (.h5)")
    checked = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        if file_layout(path) is None:
            reason = unreadable(path)
            if reason:
                raise ValueError(reason)
            raise ValueError(f"{path} is not a diffrecon result or batch output (expected an .h5 file written by "
                             "Result.save or recon batch)")
        reason = nothing_to_show(path)
        if reason:
            raise ValueError(reason)
        checked.append(str(path))
    return checked


def open_files(paths, viewer=None, with_widget: bool = True):
    """Open ``paths`` in ``viewer`` (a new ``napari.Viewer`` if none) with our reader; returns the viewer.

    The layers are shown side by side (napari's grid mode), so mean and uncertainty are both in view,
    and the Reconstruct dock widget is added unless ``with_widget`` is false.
    """
    import napari

    paths = check_files(paths)
    viewer = viewer if viewer is not None else napari.Viewer(title="diffrecon")
    for path in paths:
        viewer.open(path, plugin=PLUGIN)
    if with_widget:  # docked first: it narrows the canvas the view is then fitted to
        viewer.window.add_plugin_dock_widget(PLUGIN, "Reconstruct")
    show_side_by_side(viewer)
    return viewer


def grid_of(viewer):
    """The viewer's grid model (``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if hasattr(canvas, "grid") else viewer.grid


def show_side_by_side(viewer) -> None:
    """Grid mode, with the whole of every shown layer in view.

    napari fits the view to the first layer added, for a canvas of one cell; switching the grid on
    afterwards leaves that zoom, so each cell showed a cropped part of its layer. Pending Qt events
    are handled first so that the canvas has its final size (a dock widget just added narrows it)
    when the view is fitted.
    """
    grid_of(viewer).enabled = True
    _process_events()
    viewer.reset_view()


def _process_events() -> None:
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:  # no Qt: a headless viewer model has no layout to settle
        return
    app = QApplication.instance()
    if app is not None:
        app.processEvents()


def register(app) -> None:
    """Add ``recon view`` to the typer ``app``."""
    import typer

    @app.command("view")
    def view(
        files: List[Path] = typer.Argument(..., help="Result files or batch outputs (.h5) to open."),
        widget: bool = typer.Option(True, "--widget/--no-widget", help="Also open the Reconstruct dock widget."),
    ) -> None:
        """Open reconstructions in napari: mean, uncertainty (std), initial estimate and samples."""
        try:
            check_files(files)
        except ValueError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(2) from None
        import napari

        open_files(files, with_widget=widget)
        napari.run()
