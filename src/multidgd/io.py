"""Reading and writing of .h5mu / .h5ad files and of results into them."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .results import write_results

__all__ = ["read", "write", "add_results", "mudata_options"]


def read(path: str | Path, *, backed: bool = False):
    """Read an ``.h5mu`` (MuData), ``.h5ad`` (AnnData) or 10x ``.h5`` (Cell Ranger ARC) file.

    ``backed=True`` opens it read-only with the count matrices left on disk: training then
    reads count rows per minibatch (X must be stored as CSR), so memory does not grow with
    the number of cells beyond per-cell labels, library sizes and representations. A
    ``.zarr`` store (AnnData or MuData) is read the same way.

    Parameters
    ----------
    path
        File (``.h5mu``, ``.h5ad``, 10x ``filtered_feature_bc_matrix.h5``: an AnnData of genes
        and peaks with ``var["feature_types"]``) or zarr store (``.zarr``).
    backed
        Leave the count matrices on disk.

    Returns
    -------
    MuData or AnnData
        The data read.

    Notes
    -----
    A MuData is read with mudata's option ``pull_on_update=False`` (modalities' ``obs``
    columns are not copied into the MuData's); the option is set only while reading and
    restored afterwards, also when reading fails. No other package's global setting is
    changed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix not in _FILE_KINDS:
        raise ValueError(
            f"{path}: unknown file type {suffix!r}; allowed: .h5mu (MuData), .h5ad (AnnData), .zarr (either) "
            "or .h5 (10x Cell Ranger ARC filtered_feature_bc_matrix.h5)"
        )
    try:
        with mudata_options(pull_on_update=False):
            return _READERS[suffix](path, backed=backed)
    except (OSError, ValueError, KeyError) as err:
        if str(path) in str(err):  # already names the file
            raise
        raise ValueError(
            f"{path}: cannot be read as {_FILE_KINDS[suffix]} ({type(err).__name__}: {err}); "
            f"check that it is a complete {suffix} file, e.g. by writing it again"
        ) from err


def _read_10x_h5(path: Path, *, backed: bool):
    """Read a 10x Genomics ``filtered_feature_bc_matrix.h5`` (Cell Ranger ARC): one AnnData of
    genes and peaks, ``var["feature_types"]`` telling them apart; gene names made unique.
    """
    import warnings

    import scanpy as sc

    if backed:
        raise ValueError(f"{path}: a 10x .h5 file cannot be read backed; write it as .h5ad first")
    with warnings.catch_warnings():  # duplicate gene symbols: made unique just below
        warnings.filterwarnings("ignore", message="Variable names are not unique")
        adata = sc.read_10x_h5(path, gex_only=False)
        adata.var_names_make_unique()
    return adata


def _read_h5mu(path: Path, *, backed: bool):
    """Read a MuData file (under :func:`read`'s mudata options)."""
    import mudata as md

    data = md.read_h5mu(path, backed=backed)
    if backed:
        _share_obs_names(data)
    return data


def _read_h5ad(path: Path, *, backed: bool):
    """Read an AnnData file, read-only on disk with ``backed``."""
    import anndata as ad

    return ad.read_h5ad(path, backed="r" if backed else None)


@contextmanager
def mudata_options(**options: Any) -> Iterator[None]:
    """Set mudata options (``mudata.set_options``) for a ``with`` block, then restore them.

    Unlike ``with mudata.set_options(...)`` this logs nothing.

    Parameters
    ----------
    **options
        Option name -> value, e.g. ``pull_on_update=False``.

    Yields
    ------
    None
        While the block runs, with the options set.
    """
    import mudata as md

    previous = md.set_options(**options).opts  # the values replaced
    try:
        yield
    finally:
        md.set_options(**previous)


def _share_obs_names(data) -> None:
    """Let modalities whose cell names equal the MuData's use the MuData's index object.

    Each obs table is read with its own copy of the names; for a backed file they are most
    of what is held per cell, so equal copies are dropped (the names do not change).
    """
    names = data.obs_names
    for adata in data.mod.values():
        if adata.obs_names is not names and adata.obs_names.equals(names):
            adata.obs.index = names


def _read_zarr(path: Path, *, backed: bool):
    """Read an AnnData or MuData zarr store; with ``backed`` every X stays on disk (a sparse dataset)."""
    import anndata as ad
    import mudata as md
    import zarr

    root = zarr.open_group(str(path), mode="r")
    is_mudata = "mod" in root
    if not backed:
        return md.read_zarr(str(path)) if is_mudata else ad.read_zarr(str(path))

    def lazy(group):
        if "X" not in group:
            raise ValueError(f"{path}: the store has no X to read counts from")
        x = group["X"]
        if not hasattr(x, "keys"):  # a dense array, not a sparse group
            raise ValueError(f"{path}: X is stored dense; training from disk needs CSR (write it as a sparse matrix)")
        return ad.AnnData(
            X=ad.io.sparse_dataset(x), obs=ad.io.read_elem(group["obs"]), var=ad.io.read_elem(group["var"])
        )

    if not is_mudata:
        return lazy(root)
    order = list(root["mod"].attrs.get("mod-order", [])) or sorted(root["mod"])
    mods = {name: lazy(root["mod"][name]) for name in order}
    data = md.MuData(mods)
    data.obs = ad.io.read_elem(root["obs"]).reindex(data.obs_names) if "obs" in root else data.obs
    _share_obs_names(data)
    return data


#: File suffix -> what it holds, and its reader.
_FILE_KINDS = {
    ".h5mu": "a MuData (.h5mu)",
    ".h5ad": "an AnnData (.h5ad)",
    ".zarr": "a zarr store of an AnnData or MuData",
    ".h5": "a 10x Genomics feature-barcode matrix (.h5)",
}
_READERS = {".h5mu": _read_h5mu, ".h5ad": _read_h5ad, ".zarr": _read_zarr, ".h5": _read_10x_h5}


def write(data: Any, path: str | Path) -> Path:
    """Write a MuData to ``.h5mu`` or an AnnData to ``.h5ad`` (the suffix is set to match).

    Parameters
    ----------
    data
        MuData or AnnData.
    path
        Output path; its suffix is replaced by the one that matches ``data``.

    Returns
    -------
    pathlib.Path
        The path written.

    Notes
    -----
    Writing a MuData updates it; that runs with mudata's ``pull_on_update=False``, set for
    the write only, as in :func:`read`.
    """
    import anndata as ad

    path = Path(path)
    path = path.with_suffix(".h5ad" if isinstance(data, ad.AnnData) else ".h5mu")
    path.parent.mkdir(parents=True, exist_ok=True)
    with mudata_options(pull_on_update=False):  # writing updates a MuData: no pulling of modalities' columns
        data.write(path)
    return path


def _placed_probabilities(embedding, temperature: float | None) -> np.ndarray:
    """Cluster probabilities of placed cells: p(k | counts) at ``temperature`` where the
    embedding scored the cell against its candidates, else the responsibilities p(k | z).
    """
    from .prediction import component_posterior

    probs = np.array(embedding.cluster_probabilities, dtype=np.float32)
    cand = embedding.candidates
    if temperature is None or cand is None:
        return probs
    scored = ~np.isnan(cand.nll).all(axis=1)
    if scored.any():
        k = probs.shape[1]
        probs[scored] = component_posterior(cand.nll[scored], cand.log_prior, k, temperature)
    return probs


def add_results(data: Any, model, *, prefix: str = "multidgd", embedding=None, clustering=None) -> None:
    """Store a trained model's results in ``data`` (aligned by ``obs_names``).

    Writes ``obsm["X_<prefix>"]`` (basal latent), ``obsm["X_<prefix>_<covariate>"]`` for
    each covariate, ``obs["<prefix>_cluster"]`` (categorical),
    ``obs["<prefix>_cluster_probability"]`` and ``obs["<prefix>_split"]``: ``train``,
    ``validation``, ``placed`` (a cell the model left out, placed afterwards by
    :meth:`~multidgd.DGD.infer`: ``embedding``) or ``none`` (no results: NaN rows).

    Parameters
    ----------
    data
        MuData or AnnData holding only cells the model knows (in any order).
    model
        A trained :class:`multidgd.DGD`.
    prefix
        Prefix of the keys written.
    embedding
        :class:`~multidgd.results.Embedding` of cells the model left out (e.g. those with
        counts in one modality only); their rows come from it.
    clustering
        The trained cells' :class:`~multidgd.results.Clustering` (default
        ``model.cluster()``, p(k | z); ``model.cluster(data)`` gives p(k | counts)).
    """
    index = pd.Index(data.obs_names.astype(str))
    missing = index.difference(model.obs_names)
    if len(missing):
        raise ValueError(f"{len(missing)} cells of the data are unknown to the model, e.g. {missing[:3].tolist()}")
    latent = model.get_latent_representation()
    covariates = {key: model.get_covariate_representation(key) for key in model.covariate_keys}
    clustering = model.cluster() if clustering is None else clustering
    split = model.split.astype(str).to_numpy().astype(object)
    if embedding is not None:
        pos = model.obs_names.get_indexer(embedding.obs_names)
        if (pos < 0).any() or (split[pos] != "none").any():
            raise ValueError("embedding must hold cells the model knows but left out of training")
        latent = latent.copy()
        clustering = replace(clustering, labels=clustering.labels.copy(), probabilities=clustering.probabilities.copy())
        latent[pos] = embedding.latent
        for key in covariates:
            covariates[key] = covariates[key].copy()
            covariates[key][pos] = embedding.covariate_representation(key)
        clustering.labels[pos] = embedding.cluster
        clustering.probabilities[pos] = _placed_probabilities(embedding, clustering.temperature)
        split[pos] = "placed"
    write_results(
        data,
        model.obs_names.get_indexer(index),
        latent=latent,
        covariates=covariates,
        clustering=clustering,
        prefix=prefix,
        obs={"split": pd.Categorical(split, categories=["train", "validation", "placed", "none"])},
    )
