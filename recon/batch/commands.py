"""CLI subcommands of this area; ``recon.cli`` calls ``register(app)``."""


def register(app) -> None:
    """Add this area's subcommands to the typer ``app`` (filled in by the area's owner)."""
