"""In-memory emulator of self-hosted OpenMeter v1.0.0-beta.227 (ASGI).

Independent of the product: it imports nothing from the rest of ``reconciler`` (import-linter
contract), so its fidelity is not borrowed from the code it tests. See docs/EMULATOR.md.
"""

from reconciler.emulator.app import create_app
from reconciler.emulator.clock import Clock
from reconciler.emulator.server import EmulatorServer, serve

__all__ = ["Clock", "EmulatorServer", "create_app", "serve"]
