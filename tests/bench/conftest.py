"""Benchmarks at smoke size: each benchmark command runs end to end at a tiny size, so the
commands in docs/BENCHMARKS.md keep working. No timing is asserted here (figures come from the
full-size runs); outcomes are (counts, calls, convergence)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
