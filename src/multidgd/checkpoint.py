"""One self-describing file per model or training checkpoint, written atomically."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["write_atomic", "read"]


def write_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write with ``torch.save`` to a temporary file beside ``path``, then rename it over.

    A reader never sees a half-written file: an interrupted write leaves the previous file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read(path: str | Path, *, kind: str) -> dict[str, Any]:
    """Load a file written by :func:`write_atomic` and check that it holds ``kind``.

    Only tensors and plain Python containers are unpickled (``weights_only=True``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{path} is not a readable multidgd file: {err}") from err
    found = payload.get("kind") if isinstance(payload, dict) else None
    if found != kind:
        raise ValueError(f"{path} holds {found!r}, expected {kind!r}")
    return payload
