"""Data sets shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["demo", "demo_path"]

_DEMO_FILE = "mop_snareseq_demo_09A_09B.h5mu"


def demo_path() -> Path:
    """Path of the bundled demo file.

    Mouse primary motor cortex SNARE-seq (BICCN; Chen, Lake & Zhang 2019), samples 09A and
    09B, 1,723 cells x 1,677 genes x 25,734 peaks of raw counts, as preprocessed by scMoMaT
    (Zhang, Sun et al. 2023; MIT licence). ``obs`` holds ``cell_type`` (15 classes),
    ``subtype`` and ``sample``. See the README for sources and licences.
    """
    return Path(str(resources.files("multidgd").joinpath("bundled", _DEMO_FILE)))


def demo():
    """The bundled demo data as a MuData with modalities ``rna`` and ``atac``."""
    from .io import read

    return read(demo_path())
