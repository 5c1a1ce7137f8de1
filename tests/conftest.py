from __future__ import annotations

import os
import sys
from pathlib import Path

# tests/ helpers (contract.py and friends) importable as plain modules.
sys.path.insert(0, str(Path(__file__).parent))

IN_CI = bool(os.environ.get("CI"))
