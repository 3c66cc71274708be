"""Starting values: the initial training state (split, network, representation tables),
a sparse PCA of both modalities for the basal representations, and k-means centres of
those for the basal mixture means.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .checkpoint import TrainingState
from .data import make_validation_split
from .module import DGDModule
from .representation import RepresentationTable

if TYPE_CHECKING:
    from .config import ModelConfig, TrainConfig
    from .data import MultiomeData

__all__ = [
    "initial_state",
    "spectral_embedding",
    "kmeans_centres",
    "start_representation",
    "clip_norms",
    "choose_n_components",
    "AUTO_K",
    "neighbour_graph",
    "leiden_labels",
]


def initial_state(
    data: MultiomeData, model_config: ModelConfig, config: TrainConfig, n_components: int, seed: int
) -> TrainingState:
    """The state training starts from: the split, a seeded network and the four tables.

    Training and validation cells come from ``data.split`` when given, else a seeded
    validation split stratified by cell type. Basal rows start as set by
    ``config.basal_init`` (the PCA start embeds training and validation cells together, so
    both start alike); the basal mixture means at k-means centres of the training rows
    (``config.mixture_init``). Training covariate rows start at their class's mean,
    validation rows at 0 (they are inferred unsupervised).
    """
    train_index, val_index = _split_rows(data, config, seed)
    n_classes = [len(c) for c in data.covariate_categories]
    module = DGDModule(data.n_features, n_classes, n_components, model_config, seed=seed)
    d = model_config.covariate_dim
    basal, val_basal = start_representation(data, model_config, config, train_index, val_index, seed)
    if config.mixture_init == "kmeans":
        with torch.no_grad():
            module.basal.mean.copy_(torch.from_numpy(kmeans_centres(basal.numpy(), n_components, seed=seed)))
    cov = module.covariate_means(data.covariate_codes[train_index])
    tables = {
        "train_basal": RepresentationTable(basal),
        "train_covariate": RepresentationTable(cov),
        "val_basal": RepresentationTable(val_basal),
        "val_covariate": RepresentationTable(torch.zeros(len(val_index), d * len(n_classes))),
    }
    return TrainingState(module=module, tables=tables, train_index=train_index, val_index=val_index)


def start_representation(
    data: MultiomeData,
    model_config: ModelConfig,
    config: TrainConfig,
    train_index: np.ndarray,
    val_index: np.ndarray,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The basal rows training starts from, of the training and of the validation cells.

    As set by ``config.basal_init``; validation rows are 0 except with the PCA start,
    which embeds both sets together (and moves the farthest cells in, ``config.basal_init_clip``).
    """
    L = model_config.latent_dim
    if config.basal_init == "pca":
        emb = spectral_embedding(
            data.counts,
            np.concatenate([train_index, val_index]),
            L,
            radius=model_config.basal_radius,
            groups=data.covariate_codes,
            seed=seed,
            present=data.present,
        )
        if config.basal_init_clip is not None:
            emb = clip_norms(emb, config.basal_init_clip)
        emb = torch.from_numpy(emb)
        return emb[: len(train_index)], emb[len(train_index) :]
    if config.basal_init == "normal":
        gen = torch.Generator().manual_seed(seed + 1)
        basal = config.basal_init_sd * torch.randn(len(train_index), L, generator=gen)
    else:
        basal = torch.zeros(len(train_index), L)
    return basal, torch.zeros(len(val_index), L)


def _split_rows(data: MultiomeData, config: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the training and validation cells, with clear errors when too few."""
    n = data.n_cells
    if n < config.batch_size:
        raise ValueError(
            f"{n} cells is fewer than one minibatch (batch_size={config.batch_size}); "
            "pass TrainConfig(batch_size=...) no larger than the number of cells"
        )
    if data.split is not None:
        is_train = data.split == "train"
        is_val = data.split == "validation"
    else:
        is_val = make_validation_split(n, config.validation_fraction, strata=data.cell_type_codes, seed=seed)
        is_train = ~is_val
    train_index, val_index = np.flatnonzero(is_train), np.flatnonzero(is_val)
    if len(train_index) < config.batch_size:
        raise ValueError(
            f"{len(train_index)} training cells is fewer than one minibatch "
            f"(batch_size={config.batch_size}); lower batch_size or validation_fraction"
        )
    return train_index, val_index


def _log_normalise(x: sp.csr_matrix, median: float | None = None) -> sp.csr_matrix:
    """log1p of counts scaled to the median library size (of ``x``, or the one given), kept sparse."""
    lib = np.asarray(x.sum(axis=1)).ravel()
    scale = (np.median(lib) if median is None else median) / np.maximum(lib, 1.0)
    out = sp.diags(scale.astype(np.float32)) @ x
    out = out.tocsr()
    out.data = np.log1p(out.data)
    return out


def _centred_svd(x: sp.csr_matrix, n_components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (n, k) and directions (k, F) of the top principal components of a sparse
    matrix, centring implicitly.
    """
    from scipy.sparse.linalg import LinearOperator, svds

    mean = np.asarray(x.mean(axis=0)).ravel()
    n, f = x.shape
    k = max(1, min(n_components, min(n, f) - 1))
    op = LinearOperator(
        (n, f),
        matvec=lambda v: x @ v - (mean @ v),
        rmatvec=lambda u: x.T @ u - mean * u.sum(),
        matmat=lambda v: x @ v - np.outer(np.ones(n), mean @ v),
        rmatmat=lambda u: x.T @ u - np.outer(mean, u.sum(axis=0)),
        dtype=np.float64,
    )
    rng = np.random.default_rng(seed)
    u, s, vt = svds(op, k=k, v0=rng.standard_normal(min(n, f)), random_state=seed)
    order = np.argsort(s)[::-1]
    return u[:, order] * s[order], vt[order]


def _inverse_sd(x: sp.csr_matrix) -> np.ndarray:
    """1 / standard deviation of every feature (0 for constant features)."""
    mean = np.asarray(x.mean(axis=0)).ravel()
    mean_sq = np.asarray(x.multiply(x).mean(axis=0)).ravel()
    sd = np.sqrt(np.maximum(mean_sq - mean**2, 0.0))
    return np.where(sd > 1e-8, 1.0 / np.maximum(sd, 1e-8), 0.0)


def _scale_columns(x: sp.csr_matrix) -> sp.csr_matrix:
    """Divide every feature by its standard deviation (sparsity kept; centring is implicit)."""
    return (x @ sp.diags(_inverse_sd(x))).tocsr()


def _n_components(n_pcs: int, n_rows: int, n_features: int) -> int:
    return max(1, min(n_pcs, min(n_rows, n_features) - 1))


def _modality_scores(
    x: sp.csr_matrix,
    rows: np.ndarray,
    n_pcs: int,
    seed: int,
    max_fit_cells: int,
    chunk: int = 8192,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Top principal component scores of the log-normalised, feature-scaled rows of ``x``.

    With more than ``max_fit_cells`` rows, the components are fitted on a seeded random
    subset of that many and every row is projected onto them a block at a time, so the
    memory stays that of the subset, not of all cells (the library sizes are normalised to
    the median over all rows either way); the scores then go into ``out`` (float32) when given.
    """
    if len(rows) <= max_fit_cells:
        return _centred_svd(_scale_columns(_log_normalise(x[rows]).astype(np.float64)), n_pcs, seed)[0]
    lib = np.asarray(x.sum(axis=1)).ravel()[rows]
    median = np.median(lib)
    fit_rows = np.sort(np.random.default_rng(seed).choice(rows, max_fit_cells, replace=False))
    fit = _log_normalise(x[fit_rows], median).astype(np.float64)
    inv = _inverse_sd(fit)
    mean = np.asarray(fit.mean(axis=0)).ravel() * inv
    _, vt = _centred_svd((fit @ sp.diags(inv)).tocsr(), n_pcs, seed)
    del fit
    directions = inv[:, None] * vt.T  # (F, k): scaling folded into the projection
    offset = mean @ vt.T
    if out is None:
        out = np.empty((len(rows), vt.shape[0]), dtype=np.float32)  # per cell: k values, kept lean
    for i in range(0, len(rows), chunk):
        block = _log_normalise(x[rows[i : i + chunk]], median)
        out[i : i + chunk] = block @ directions - offset
    return out


def _centre_within_groups(x: np.ndarray, groups, rows: np.ndarray) -> None:
    """Subtract, in place, the mean of each class of every column of ``groups[rows]`` from
    the rows of ``x`` (the covariates' shifts, which their own representations model).
    """
    if groups is None:
        return
    for codes in np.asarray(groups)[rows].T:
        for g in np.unique(codes):
            x[codes == g] -= x[codes == g].mean(axis=0)


def _mosaic_embedding(
    counts: dict, rows: np.ndarray, present: np.ndarray, dim: int, groups, n_pcs: int, seed: int, max_fit_cells: int
) -> np.ndarray:
    """(len(rows), dim) joint start of a mosaic's cells, before scaling.

    Each modality's components are fitted on the cells that have it and centred within
    each covariate class. The cells with both modalities are embedded as paired data are
    (blocks scaled to unit variance, concatenated, top ``dim`` components); a cell with one
    modality is placed by least squares (with an intercept) from that modality's scores to
    the joint embedding, fitted on the paired cells.
    """
    has = np.asarray(present)[rows]
    both = has.all(axis=1)
    if not both.any():
        raise ValueError("the PCA start of a mosaic needs cells with both modalities among the training cells")
    blocks = []
    for j, x in enumerate(counts.values()):
        scores = _modality_scores(x, rows[has[:, j]], n_pcs, seed, max_fit_cells).astype(np.float64)
        scores -= scores.mean(axis=0)
        _centre_within_groups(scores, groups, rows[has[:, j]])
        block = np.zeros((len(rows), scores.shape[1]))
        block[has[:, j]] = scores / np.sqrt(max(scores.var(axis=0).sum(), 1e-12))
        blocks.append(block)
    joint = np.hstack([b[both] for b in blocks])
    joint -= joint.mean(axis=0)
    u, s, _ = np.linalg.svd(joint, full_matrices=False)
    emb = np.zeros((len(rows), dim))
    k = min(dim, len(s))
    emb[both, :k] = u[:, :k] * s[:k]
    for j, block in enumerate(blocks):
        single = has[:, j] & ~both
        if single.any():
            design = np.hstack([block[both], np.ones((int(both.sum()), 1))])
            coef, *_ = np.linalg.lstsq(design, emb[both], rcond=None)
            emb[single] = np.hstack([block[single], np.ones((int(single.sum()), 1))]) @ coef
    return emb


def spectral_embedding(
    counts: dict[str, sp.csr_matrix],
    rows: np.ndarray,
    dim: int,
    *,
    radius: float,
    groups: np.ndarray | None = None,
    n_pcs: int = 50,
    seed: int = 0,
    max_fit_cells: int = 20_000,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Joint PCA of log-normalised, feature-scaled counts of every modality, for ``rows``.

    Each modality's top ``n_pcs`` component scores are scaled to unit total variance, the
    blocks are concatenated, centred within each class of every column of ``groups`` (the
    covariates, whose own representations model batch shifts), reduced to ``dim``
    components, and scaled so that 95 % of cells lie within ``radius / 2`` of the origin.

    Parameters
    ----------
    groups
        (n_cells_total, V) covariate codes indexed like the counts' rows, or None.
    max_fit_cells
        Above this many rows, each modality's components are fitted on a seeded subset of
        this size and all rows projected onto them in blocks, the scores are kept in
        float32 and the joint directions come from the Gram matrix (summed in blocks), so
        the memory per cell is a few hundred bytes.
    present
        (n_cells_total, 2) bool, which modalities each cell has (a mosaic; None: all): see
        :func:`_mosaic_embedding`.

    Returns
    -------
    (len(rows), dim) float32.
    """
    rows = np.asarray(rows)
    if present is not None and np.asarray(present)[rows].all():
        present = None  # every cell paired: the paired start
    large = len(rows) > max_fit_cells and present is None
    if large:
        # every modality's scores written straight into one float32 array, centred in place
        ks = [_n_components(n_pcs, max_fit_cells, x.shape[1]) for x in counts.values()]
        joint = np.empty((len(rows), sum(ks)), dtype=np.float32)
        start = 0
        for x, k in zip(counts.values(), ks, strict=True):
            part = joint[:, start : start + k]
            _modality_scores(x, rows, n_pcs, seed, max_fit_cells, out=part)
            part /= np.sqrt(max(part.var(axis=0, dtype=np.float64).sum(), 1e-12))
            start += k
        joint -= joint.mean(axis=0, dtype=np.float64).astype(joint.dtype)
        if groups is not None:
            for codes in np.asarray(groups)[rows].T:
                classes, inverse = np.unique(codes, return_inverse=True)
                sums = np.zeros((len(classes), joint.shape[1]))
                for i in range(0, len(rows), 65536):  # class sums in float64, a block at a time
                    np.add.at(sums, inverse[i : i + 65536], joint[i : i + 65536].astype(np.float64))
                means = sums / np.bincount(inverse)[:, None]
                for i in range(0, len(rows), 65536):
                    joint[i : i + 65536] -= means[inverse[i : i + 65536]].astype(joint.dtype)
    elif present is None:
        blocks = []
        for x in counts.values():
            scores = _modality_scores(x, rows, n_pcs, seed, max_fit_cells)
            blocks.append(scores / np.sqrt(max(scores.var(axis=0).sum(), 1e-12)))
        joint = np.hstack(blocks)
        joint = joint - joint.mean(axis=0)
        _centre_within_groups(joint, groups, rows)
    if present is not None:
        emb = _mosaic_embedding(counts, rows, present, dim, groups, n_pcs, seed, max_fit_cells)
    elif large:
        # the top directions from the (features x features) Gram matrix, summed a block of
        # cells at a time: no (cells x features) float64 copy and no SVD workspace per cell
        gram = np.zeros((joint.shape[1], joint.shape[1]))
        for i in range(0, len(joint), 65536):
            block = joint[i : i + 65536].astype(np.float64)
            gram += block.T @ block
        values, vectors = np.linalg.eigh(gram)
        top = vectors[:, np.argsort(values)[::-1][:dim]]
        emb = joint @ top.astype(joint.dtype)
        del joint
    else:
        u, s, _ = np.linalg.svd(joint, full_matrices=False)
        emb = u[:, :dim] * s[:dim]
    if emb.shape[1] < dim:
        emb = np.hstack([emb, np.zeros((len(rows), dim - emb.shape[1]), dtype=emb.dtype)])
    q = np.quantile(np.linalg.norm(emb, axis=1), 0.95)
    return (emb * (0.5 * radius / max(q, 1e-12))).astype(np.float32)


def clip_norms(points: np.ndarray, quantile: float) -> np.ndarray:
    """Rows farther from the origin than the ``quantile`` of the rows' norms, moved in along
    their direction to that norm; the others unchanged. Returns a new array of the same dtype.
    """
    norms = np.linalg.norm(points, axis=1)
    limit = np.quantile(norms, quantile)
    scale = np.minimum(1.0, limit / np.maximum(norms, 1e-12))
    return (points * scale[:, None]).astype(points.dtype)


def kmeans_centres(points: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """k-means centres of ``points`` (k-means++ start, seeded). Returns (k, d) float32."""
    from sklearn.cluster import KMeans

    k_eff = min(k, len(points))
    centres = KMeans(n_clusters=k_eff, n_init=20, random_state=seed).fit(points).cluster_centers_
    if k_eff < k:  # more components than points: repeat with a little jitter
        rng = np.random.default_rng(seed)
        extra = centres[rng.integers(0, k_eff, k - k_eff)] + 0.01 * rng.standard_normal((k - k_eff, points.shape[1]))
        centres = np.vstack([centres, extra])
    return centres.astype(np.float32)


#: How K is chosen without a cell-type key (:func:`choose_n_components`).
AUTO_K = {"resolution": 1.0, "n_neighbors": 15, "min_fraction": 0.01}


def neighbour_graph(latent: np.ndarray, *, n_neighbors: int, seed: int = 0):
    """The k-nearest-neighbour graph (scanpy's) of (n, d) coordinates, in an AnnData for :func:`leiden_labels`."""
    import anndata as ad
    import scanpy as sc

    graph = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(len(latent))]))
    graph.obsm["X_latent"] = np.asarray(latent, dtype=np.float32)
    sc.pp.neighbors(graph, use_rep="X_latent", n_neighbors=n_neighbors, random_state=seed)
    return graph


def leiden_labels(graph, resolution: float, *, seed: int = 0) -> np.ndarray:
    """(n,) int Leiden clusters of a :func:`neighbour_graph` (scanpy's igraph flavour, 2 iterations)."""
    import scanpy as sc

    sc.tl.leiden(graph, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    return graph.obs["leiden"].astype(int).to_numpy()


def choose_n_components(data: MultiomeData, latent_dim: int, *, seed: int = 0) -> tuple[int, str]:
    """The number of basal components for data without cell types: Leiden clusters of the start.

    Every cell is embedded as the PCA start does (:func:`spectral_embedding`, centred within
    covariate classes), a 15-nearest-neighbour graph is built on it and clustered by Leiden
    at resolution 1 (scanpy's defaults); K is the number of clusters holding at least 1 % of
    the cells (at least 1).

    Returns
    -------
    tuple[int, str]
        K and a sentence saying how it was chosen.
    """
    n = data.n_cells
    if n < 3:
        return 1, f"K = 1: {n} cells are too few to cluster"
    emb = spectral_embedding(
        data.counts, np.arange(n), latent_dim, radius=1.0, groups=data.covariate_codes, seed=seed, present=data.present
    )
    k_nn = min(AUTO_K["n_neighbors"], n - 1)
    graph = neighbour_graph(emb, n_neighbors=k_nn, seed=seed)
    sizes = np.bincount(leiden_labels(graph, AUTO_K["resolution"], seed=seed))
    k = max(1, int((sizes >= AUTO_K["min_fraction"] * n).sum()))
    how = (
        f"K = {k} chosen from the data: Leiden clusters (resolution {AUTO_K['resolution']:g}, "
        f"{k_nn} neighbours) of the PCA start holding at least {AUTO_K['min_fraction']:.0%} of the "
        f"{n} cells ({len(sizes)} clusters in all); set n_components to choose K yourself"
    )
    return k, how
