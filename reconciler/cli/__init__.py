"""The command line (``reconciler …``) and everything that renders results for people.

``app``: the typer application and its commands; ``render``: rich tables of the engine's typed
results; ``demo``: the plan-change story on the emulator.
"""

from reconciler.cli.app import app, main

__all__ = ["app", "main"]
