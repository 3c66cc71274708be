"""Data sets shipped with the package."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import scipy.sparse as sp

__all__ = ["demo", "demo_path", "synthetic", "sample_counts"]

_DEMO_FILE = "mop_snareseq_demo_09A_09B.h5mu"


def demo_path() -> Path:
    """Path of the bundled demo file.

    Mouse primary motor cortex SNARE-seq (BICCN; Chen, Lake & Zhang 2019), samples 09A and
    09B, 1,723 cells x 1,677 genes x 25,734 peaks of raw counts, as preprocessed by scMoMaT
    (Zhang, Sun et al. 2023; MIT licence). ``obs`` holds ``cell_type`` (15 classes),
    ``subtype`` and ``sample``. See the README for sources and licences.

    Returns
    -------
    pathlib.Path
        Path of the ``.h5mu`` file inside the installed package.
    """
    return Path(str(resources.files("multidgd").joinpath("bundled", _DEMO_FILE)))


def demo():
    """Read the bundled demo data (see :func:`demo_path`).

    Returns
    -------
    mudata.MuData
        Modalities ``rna`` and ``atac`` of raw counts.
    """
    from .io import read

    return read(demo_path())


def _profiles(n_groups_k, n_batches, n_features, rng, *, marker_fraction, marker_sd, batch_sd, base_sd):
    """Draw (n_clusters, n_batches, F) feature fractions: base x cluster markers x batch shifts."""
    base = rng.normal(0.0, base_sd, n_features)
    cluster = np.zeros((n_groups_k, n_features))
    n_markers = max(1, int(round(marker_fraction * n_features)))
    for k in range(n_groups_k):
        idx = rng.choice(n_features, n_markers, replace=False)
        cluster[k, idx] = rng.normal(0.0, marker_sd, n_markers)
    batch = rng.normal(0.0, batch_sd, (n_batches, n_features))
    logit = base[None, None, :] + cluster[:, None, :] + batch[None, :, :]
    p = np.exp(logit - logit.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def _median_library(p: np.ndarray, density: float, library_sd: float, rng: np.random.Generator) -> float:
    """Find the median library size for which the expected fraction of non-zeros is ``density``."""
    from scipy.special import ndtri

    if not 0 < density < 1:
        raise ValueError(f"densities must be in (0, 1), got {density}")
    flat = p.reshape(-1, p.shape[-1])
    if flat.shape[1] > 5_000:  # the expectation is a mean over features: a subset estimates it
        flat = flat[:, rng.choice(flat.shape[1], 5_000, replace=False)]
    spread = np.exp(library_sd * ndtri(np.linspace(0.05, 0.95, 9)))

    def expected(log_median):
        lam = np.exp(log_median) * spread[:, None, None] * flat[None, :, :]
        return float((-np.expm1(-lam)).mean())

    lo, hi = 0.0, 30.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected(mid) < density else (lo, mid)
    return float(np.exp((lo + hi) / 2))


def sample_counts(
    p: np.ndarray, group: np.ndarray, library: np.ndarray, rng: np.random.Generator, block_cells: int = 4096
) -> sp.csr_matrix:
    """Draw Poisson counts ``x_ij ~ Poisson(library_i * p[group_i, j])``, sparse.

    Cells are taken in blocks of ``block_cells``, in order. Within a block, for the cells of
    one group, feature j's total count is Poisson(sum_i library_i * p_j), and each of its
    events falls on cell i with probability library_i / sum(library) (a multinomial split of
    a Poisson total gives independent Poisson counts). Work and memory are proportional to
    the counts.

    Parameters
    ----------
    p
        (n_groups, F) feature fractions of each group (rows sum to 1).
    group
        (n_cells,) int group of each cell.
    library
        (n_cells,) expected library size of each cell.
    rng
        Random generator.
    block_cells
        Cells drawn together.

    Returns
    -------
    scipy.sparse.csr_matrix
        (n_cells, F) float32 counts in canonical form.
    """
    n_cells, n_features = len(group), p.shape[-1]
    all_cols = np.arange(n_features, dtype=np.int32)
    blocks = []
    for start in range(0, n_cells, block_cells):
        stop = min(start + block_cells, n_cells)
        rows, cols = [], []
        for g in np.unique(group[start:stop]):
            local = np.flatnonzero(group[start:stop] == g)
            cum = np.cumsum(library[start:stop][local])
            col = np.repeat(all_cols, rng.poisson(cum[-1] * p[g]))
            pick = np.searchsorted(cum, rng.random(len(col)) * cum[-1], side="right")
            rows.append(local[np.minimum(pick, len(local) - 1)].astype(np.int32))
            cols.append(col)
        col = np.concatenate(cols)
        x = sp.csr_matrix(
            (np.ones(len(col), dtype=np.float32), (np.concatenate(rows), col)), shape=(stop - start, n_features)
        )
        x.sum_duplicates()
        blocks.append(x)
    return sp.vstack(blocks, format="csr")


def synthetic(
    n_cells: int = 2000,
    n_genes: int = 2000,
    n_peaks: int = 10000,
    *,
    n_clusters: int = 8,
    n_batches: int = 2,
    rna_density: float = 0.07,
    atac_density: float = 0.03,
    library_sd: float = 0.6,
    marker_fraction: float = 0.1,
    marker_sd: float = 1.5,
    batch_sd: float = 0.2,
    seed: int = 0,
):
    """Paired RNA + ATAC counts with cluster and batch structure, built sparse.

    Each cell belongs to a cluster (``obs["cell_type"]``, ``c0``...) and a batch
    (``obs["batch"]``, ``b0``...). A modality's expected profile is a log-normal base
    (sd 1.5 on the log scale for genes, 1.0 for peaks), times cluster effects on a random
    ``marker_fraction`` of the features (log-scale sd ``marker_sd``), times per-batch
    feature shifts (sd ``batch_sd``); the same cluster drives both modalities. Library sizes
    are log-normal (log-scale sd ``library_sd``), their median set so the expected fraction
    of non-zero entries is ``rna_density`` / ``atac_density`` (real files: RNA about 5-10 %,
    ATAC about 1-6 %; library sd 0.6-0.7 on the log scale). Counts are Poisson given the
    profile and library: the cluster and batch structure supply the extra-Poisson variance.
    Peaks are named ``chrN:start-end``.

    Nothing dense of shape cells x features is ever built; the 69,249 x 13,431 x 116,490
    shape of the bone-marrow data set takes well under a minute.

    Parameters
    ----------
    n_cells, n_genes, n_peaks
        Shape of the data.
    n_clusters, n_batches
        Number of cell types and of batches.
    rna_density, atac_density
        Expected fraction of non-zero entries per modality, in (0, 1).
    library_sd
        Standard deviation of the log library sizes.
    marker_fraction, marker_sd
        Fraction of features with cluster effects and their log-scale standard deviation.
    batch_sd
        Log-scale standard deviation of the per-batch feature shifts.
    seed
        Seed of the random generator.

    Returns
    -------
    mudata.MuData
        Modalities ``rna`` and ``atac`` (CSR float32 counts).
    """
    import anndata as ad
    import mudata as md
    import pandas as pd

    for name, v in {"n_cells": n_cells, "n_genes": n_genes, "n_peaks": n_peaks}.items():
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if n_clusters < 1 or n_batches < 1 or n_clusters * n_batches > n_cells:
        raise ValueError(f"need 1 <= n_clusters * n_batches <= n_cells, got {n_clusters} x {n_batches}")
    if library_sd < 0:
        raise ValueError(f"library_sd must be >= 0, got {library_sd}")
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, n_clusters, n_cells)
    batch = rng.integers(0, n_batches, n_cells)
    log_library = rng.normal(0.0, library_sd, n_cells)
    group = cluster * n_batches + batch
    mods = {}
    for name, n_feat, density, base_sd in (("rna", n_genes, rna_density, 1.5), ("atac", n_peaks, atac_density, 1.0)):
        p = _profiles(
            n_clusters,
            n_batches,
            n_feat,
            rng,
            marker_fraction=marker_fraction,
            marker_sd=marker_sd,
            batch_sd=batch_sd,
            base_sd=base_sd,
        )
        library = _median_library(p, density, library_sd, rng) * np.exp(log_library)
        x = sample_counts(p.reshape(-1, n_feat), group, library, rng)
        if name == "rna":
            var = pd.DataFrame({"feature_types": "Gene Expression"}, index=[f"gene{j}" for j in range(n_feat)])
        else:
            chrom = 1 + np.arange(n_feat) * 20 // n_feat
            start = 10_000 + 2_000 * (np.arange(n_feat) - np.searchsorted(chrom, chrom))
            names = [f"chr{c}:{s}-{s + 500}" for c, s in zip(chrom, start, strict=True)]
            var = pd.DataFrame({"feature_types": "Peaks"}, index=names)
        mods[name] = ad.AnnData(X=x, var=var, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))
    mdata = md.MuData(mods)
    mdata.obs["cell_type"] = pd.Categorical([f"c{k}" for k in cluster])
    mdata.obs["batch"] = pd.Categorical([f"b{b}" for b in batch])
    return mdata
