"""Subprocesses must run the ambient_fast this process imported (the installed wheel in CI,
an in-place build in development), not the source tree of the current directory."""

from __future__ import annotations

from pathlib import Path

import ambient_fast

PACKAGE_ROOT = Path(ambient_fast.__file__).resolve().parents[1]
