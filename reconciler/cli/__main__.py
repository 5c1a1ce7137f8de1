"""``python -m reconciler.cli``."""

from reconciler.cli.app import main

main()
