"""openmeter-reconciler: usage-preserving plan changes for self-hosted OpenMeter."""

__version__ = "0.1.0"
