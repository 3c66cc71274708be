"""Reading and writing of .h5mu / .h5ad files and of results into them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .results import write_results

__all__ = ["read", "write", "add_results"]


def read(path: str | Path, *, backed: bool = False):
    """Read an ``.h5mu`` (MuData) or ``.h5ad`` (AnnData) file.

    ``backed=True`` opens it read-only with the count matrices left on disk: training then
    reads count rows per minibatch (X must be stored as CSR), so memory does not grow with
    the number of cells beyond per-cell labels, library sizes and representations. A
    ``.zarr`` store (AnnData or MuData) is read the same way.

    Parameters
    ----------
    path
        File (``.h5mu``, ``.h5ad``) or zarr store (``.zarr``).
    backed
        Leave the count matrices on disk.

    Returns
    -------
    MuData or AnnData
        The data read.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".h5mu":
        import mudata as md

        md.set_options(pull_on_update=False)
        data = md.read_h5mu(path, backed=backed)
        if backed:
            _share_obs_names(data)
        return data
    if suffix == ".h5ad":
        import anndata as ad

        return ad.read_h5ad(path, backed="r" if backed else None)
    if suffix == ".zarr":
        return _read_zarr(path, backed=backed)
    raise ValueError(
        f"{path}: unknown file type {suffix!r}; allowed: .h5mu (MuData), .h5ad (AnnData) or .zarr (either)"
    )


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

    md.set_options(pull_on_update=False)
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
    """
    import anndata as ad

    path = Path(path)
    path = path.with_suffix(".h5ad" if isinstance(data, ad.AnnData) else ".h5mu")
    path.parent.mkdir(parents=True, exist_ok=True)
    data.write(path)
    return path


def add_results(data: Any, model, *, prefix: str = "multidgd") -> None:
    """Store a trained model's results in ``data`` (aligned by ``obs_names``).

    Writes ``obsm["X_<prefix>"]`` (basal latent), ``obsm["X_<prefix>_<covariate>"]`` for
    each covariate, ``obs["<prefix>_cluster"]`` (categorical, NaN for cells not trained)
    and ``obs["<prefix>_cluster_probability"]``.

    Parameters
    ----------
    data
        MuData or AnnData holding only cells the model knows (in any order).
    model
        A trained :class:`multidgd.DGD`.
    prefix
        Prefix of the keys written.
    """
    index = pd.Index(data.obs_names.astype(str))
    missing = index.difference(model.obs_names)
    if len(missing):
        raise ValueError(f"{len(missing)} cells of the data are unknown to the model, e.g. {missing[:3].tolist()}")
    write_results(
        data,
        model.obs_names.get_indexer(index),
        latent=model.get_latent_representation(),
        covariates={key: model.get_covariate_representation(key) for key in model.covariate_keys},
        clustering=model.cluster(),
        prefix=prefix,
    )
