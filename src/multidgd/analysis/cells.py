"""The cells an analysis runs on: the model's own representations of its cells, and those of
new cells from an embedding (:meth:`multidgd.DGD.infer`), looked up by name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CellSource", "Representations", "cell_representations"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CellSource:
    """Where an analysis's cells come from (the analysis's arguments of the same names).

    Attributes
    ----------
    cells
        Names, positions or a boolean mask of the data's cells (None: all).
    groupby
        ``obs`` column grouping the cells, or None.
    embedding
        :class:`~multidgd.results.Embedding` of cells the model lacks, or None to place them
        with :meth:`~multidgd.DGD.infer` (keyword arguments ``infer_kwargs``).
    rna_mod, atac_mod, layer
        Where the counts are in the data.
    infer_kwargs
        Keyword arguments of :meth:`~multidgd.DGD.infer`.
    """

    cells: Any
    groupby: Any
    embedding: Any
    rna_mod: str | None
    atac_mod: str | None
    layer: str | None
    infer_kwargs: dict | None


@dataclass(frozen=True)
class Representations:
    """Representations and library sizes of the selected cells.

    Attributes
    ----------
    latent
        (n, L) basal representations.
    covariate
        (n, d * V) covariate representations.
    library
        (n, 2) float64 library sizes over all model features (columns ``rna``, ``atac``).
    """

    latent: np.ndarray
    covariate: np.ndarray
    library: np.ndarray


def cell_representations(model, data, query, rows: np.ndarray, source: CellSource) -> Representations:
    """Look up the model's own representations of its cells, the others' in the embedding.

    Parameters
    ----------
    model
        A trained :class:`~multidgd.DGD`.
    data
        The MuData or AnnData ``query`` was read from (cells the model lacks are placed from it).
    query
        :class:`~multidgd.query.QueryData` of ``data``.
    rows
        Positions of the selected cells in ``query.obs_names``.
    source
        The embedding or the :meth:`~multidgd.DGD.infer` arguments for the other cells.

    Returns
    -------
    Representations
        Row ``i`` belongs to cell ``query.obs_names[rows[i]]``.
    """
    obs = query.obs_names[rows]
    n = len(rows)
    latent = np.empty((n, model.config.latent_dim), dtype=np.float32)
    cov_dim = model.config.covariate_dim * len(model.covariate_keys)
    covariate = np.empty((n, cov_dim), dtype=np.float32)
    library = query.library_size[rows].astype(np.float64)
    pos = model.obs_names.get_indexer(obs)
    known = pos >= 0
    known[known] = (model.split != "none").to_numpy()[pos[known]]
    if known.any():
        latent[known] = model.get_latent_representation()[pos[known]]
        covariate[known] = model.get_covariate_matrix()[pos[known]]
        try:
            library[known] = model.get_library_size()[pos[known]]
        except ValueError:  # a model file without library sizes
            pass
    unknown = np.flatnonzero(~known)
    if len(unknown):
        embedding = _new_cells_embedding(model, data, query, obs[unknown], source)
        epos = embedding.obs_names.get_indexer(obs[unknown])
        if (epos < 0).any():
            raise ValueError(
                f"{int((epos < 0).sum())} cells are neither cells of the model nor in the embedding, "
                f"e.g. {obs[unknown][epos < 0][:3].tolist()}"
            )
        latent[unknown] = embedding.latent[epos]
        covariate[unknown] = embedding.covariate[epos]
        library[unknown] = embedding.library_size[epos]
    return Representations(latent, covariate, library)


def _new_cells_embedding(model, data, query, new_cells: pd.Index, source: CellSource):
    """Return the given embedding, or place the cells the model lacks with :meth:`~multidgd.DGD.infer`."""
    from ..results import Embedding

    embedding = source.embedding
    if embedding is None:
        logger.info("%d cells are not cells of the model: placing them with infer()", len(new_cells))
        sub = data[np.asarray(query.obs_names.isin(new_cells))]
        embedding = model.infer(
            sub, rna_mod=source.rna_mod, atac_mod=source.atac_mod, layer=source.layer, **(source.infer_kwargs or {})
        )
    if not isinstance(embedding, Embedding):
        raise TypeError(f"embedding must be an Embedding from DGD.infer(), got {type(embedding).__name__}")
    return embedding
