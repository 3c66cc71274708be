"""scIB integration metrics of latents, by ``scib-metrics`` (optional extra ``scib``).

:func:`scib_scores` runs scib-metrics' ``Benchmarker`` with its default metrics on the
training cells' latents (multidgd's, MultiVI's when compared, and :func:`plain_embedding`,
a plain baseline): bio conservation (isolated labels, NMI and ARI of k-means clusters,
silhouette of the labels, cLISI) and batch correction (BRAS batch silhouette, iLISI, kBET,
graph connectivity, PCR comparison against the plain embedding), each class averaged and the
total 0.6 × bio + 0.4 × batch, unscaled (``get_results(min_max_scale=False)``), so a score
does not depend on which other embeddings are in the table.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

__all__ = ["require_scib", "plain_embedding", "scib_scores", "PLAIN", "SCIB_AGGREGATES"]

logger = logging.getLogger(__name__)

#: Name of the plain baseline embedding in the tables.
PLAIN = "pca_plain"
#: The aggregate scores of a scIB table.
SCIB_AGGREGATES = ("Bio conservation", "Batch correction", "Total")


def require_scib() -> None:
    """Raise ImportError with the install command when scib-metrics is missing."""
    try:
        import scib_metrics  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "scIB metrics need scib-metrics: pip install -c constraints.txt '.[scib]' inside .venv"
        ) from err


def plain_embedding(data, rows: np.ndarray, *, dim: int = 20, seed: int = 0) -> np.ndarray:
    """A plain joint PCA of ``rows``: log-normalised, feature-scaled RNA and ATAC, no batch correction.

    It is multidgd's own PCA start (:func:`~multidgd.initialization.spectral_embedding`)
    without the centring within covariate classes.

    Parameters
    ----------
    data
        :class:`~multidgd.data.MultiomeData` of every cell.
    rows
        Rows of the cells to embed.
    dim, seed
        Components and the seed of the SVD.

    Returns
    -------
    numpy.ndarray
        (len(rows), dim) float32.
    """
    from ..initialization import spectral_embedding

    return spectral_embedding(data.counts, rows, dim, radius=1.0, groups=None, seed=seed)


def scib_scores(
    embeddings: dict[str, np.ndarray], labels: np.ndarray, batches: np.ndarray, *, pre_integrated: str = PLAIN
) -> dict[str, dict[str, float]]:
    """ScIB metrics of each embedding of the same cells.

    Parameters
    ----------
    embeddings
        Name -> (n, d) latent, all of the same n cells.
    labels, batches
        (n,) cell types and batches.
    pre_integrated
        Which embedding is the unintegrated reference of the PCR comparison.

    Returns
    -------
    dict
        Embedding -> metric -> value (scib-metrics' metric names and :data:`SCIB_AGGREGATES`).
    """
    require_scib()
    import anndata as ad
    import pandas as pd
    from scib_metrics.benchmark import Benchmarker

    n = len(labels)
    if len(np.unique(batches)) < 2:
        raise ValueError("scIB batch-correction metrics need at least two batches")
    for name, x in embeddings.items():
        if len(x) != n or not np.isfinite(x).all():
            raise ValueError(f"embedding {name!r} must have {n} finite rows, got shape {np.shape(x)}")
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels), "batch": pd.Categorical(batches)})
    obs.index = obs.index.astype(str)
    adata = ad.AnnData(obs=obs)
    for name, x in embeddings.items():
        adata.obsm[name] = np.asarray(x, dtype=np.float32)
    bench = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=list(embeddings),
        pre_integrated_embedding_obsm_key=pre_integrated,
        n_jobs=1,
        progress_bar=False,
    )
    quiet = logging.getLogger("scib_metrics")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # one INFO line per small label otherwise
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            bench.benchmark()
    finally:
        quiet.setLevel(level)
    if any("n_neighbors" in str(w.message) for w in caught):
        logger.info("the approximate nearest neighbours of some cells are incomplete (cells at the same place)")
    table = bench.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore")
    out: dict[str, dict[str, Any]] = {}
    for name in embeddings:
        out[name] = {str(k): float(v) for k, v in table.loc[name].items()}
    return out
