"""Where the bundled data live: inside the wheel, or in the repository for an editable install."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def bundled(kind: str) -> Path:
    """Folder of a bundled resource: ``geography``, ``demo`` or ``models``."""
    packaged = Path(str(resources.files("bayesnqp"))) / "_bundled" / kind
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2]
    source = repo / ("models" if kind == "models" else f"data/{kind}")
    if source.is_dir():
        return source
    raise FileNotFoundError(f"bundled {kind!r} data not found (looked in {packaged} and {source})")


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
