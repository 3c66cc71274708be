"""One mosaic training set from a paired data set and single-modality ones.

:class:`~multidgd.DGD` trains on a MuData whose modalities hold different, overlapping
cells: each cell's loss has the modalities it has. :func:`combine_mosaic` builds such a
MuData from a paired MuData plus an RNA-only and/or an ATAC-only AnnData, keeping the
features all inputs share and recording where each cell came from.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from .data import container_kind, mudata_modalities

__all__ = ["SOURCE_KEY", "combine_mosaic"]

logger = logging.getLogger(__name__)

#: obs column :func:`combine_mosaic` adds: ``paired``, ``rna_only`` or ``atac_only``.
SOURCE_KEY = "modality_source"

#: Fewer shared features than this fraction of the paired data's are refused.
MIN_SHARED_FRACTION = 0.5


def _shared(paired_names: pd.Index, other_names: pd.Index, what: str) -> pd.Index:
    """The paired data's features that ``other`` has too, in the paired order."""
    shared = paired_names[paired_names.isin(other_names)]
    if len(shared) < MIN_SHARED_FRACTION * len(paired_names):
        raise ValueError(
            f"the {what} data share {len(shared)} of the paired data's {len(paired_names)} features "
            f"(by var_names; at least {MIN_SHARED_FRACTION:.0%} needed): are they of the same genome "
            "annotation / peak set? (e.g. {})".format(other_names[:3].tolist())
        )
    if len(shared) < len(paired_names):
        logger.info("%s: %d of %d paired features are shared and kept", what, len(shared), len(paired_names))
    return shared


def combine_mosaic(
    paired: Any,
    rna: Any = None,
    atac: Any = None,
    *,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    source_key: str = SOURCE_KEY,
):
    """A MuData for mosaic training: the paired cells, plus cells with RNA only and ATAC only.

    Parameters
    ----------
    paired
        MuData with both modalities (raw counts in ``X``) for the same cells.
    rna, atac
        AnnData of genes (RNA only) and of peaks (ATAC only), raw counts in ``X``; either
        may be None.
    rna_mod, atac_mod
        The modalities' names in ``paired`` (and in the result).
    source_key
        obs column added to the result: ``paired``, ``rna_only`` or ``atac_only``. Pass it
        as a covariate key when the single-modality data come from other experiments.

    Returns
    -------
    mudata.MuData
        Modalities ``rna_mod`` (paired and RNA-only cells) and ``atac_mod`` (paired and
        ATAC-only cells) over the features each modality's inputs share (in the paired
        order); obs of every cell with the inputs' obs columns and ``source_key``. The
        inputs are not modified.

    Raises
    ------
    ValueError
        When a cell name repeats across inputs, fewer than half of a modality's paired
        features are in its single-modality data, or ``paired`` lacks a modality.
    """
    import anndata as ad
    import mudata as md

    if container_kind(paired) != "mudata":
        raise ValueError("paired must be a MuData with an RNA and an ATAC modality")
    mods = mudata_modalities(paired, {"rna": rna_mod, "atac": atac_mod})
    if set(mods) != {"rna", "atac"}:
        raise ValueError(f"paired needs modalities {rna_mod!r} and {atac_mod!r}; it has {list(paired.mod)}")
    if rna is None and atac is None:
        raise ValueError("give single-modality cells: rna= (AnnData of genes) and/or atac= (AnnData of peaks)")
    names = [pd.Index(paired.obs_names.astype(str))]
    parts = {}
    for m, extra, kind in (("rna", rna, "rna_only"), ("atac", atac, "atac_only")):
        base = mods[m]
        if extra is None:
            parts[m] = (base, None)
            continue
        if container_kind(extra) != "anndata":
            raise ValueError(f"{m} must be an AnnData of {'genes' if m == 'rna' else 'peaks'}")
        keep = _shared(pd.Index(base.var_names.astype(str)), pd.Index(extra.var_names.astype(str)), kind)
        parts[m] = (base[:, keep], extra[:, keep])
        names.append(pd.Index(extra.obs_names.astype(str)))
    every = names[0].append(names[1:])
    if not every.is_unique:
        dup = every[every.duplicated()].unique()[:3].tolist()
        raise ValueError(f"cell names repeat across the inputs, e.g. {dup}; make them unique (e.g. a prefix per file)")
    out = {}
    for m, (base, extra) in parts.items():
        pieces = [ad.AnnData(base.X, obs=pd.DataFrame(index=base.obs_names), var=base.var.copy())]
        if extra is not None:
            pieces.append(ad.AnnData(extra.X, obs=pd.DataFrame(index=extra.obs_names), var=extra.var.copy()))
        out[{"rna": rna_mod, "atac": atac_mod}[m]] = ad.concat(pieces, join="inner", merge="first")
    result = md.MuData(out)
    obs = [paired.obs.assign(**{source_key: "paired"})]
    for extra, kind in ((rna, "rna_only"), (atac, "atac_only")):
        if extra is not None:
            obs.append(extra.obs.assign(**{source_key: kind}))
    frame = pd.concat(obs, axis=0, join="outer")
    frame[source_key] = pd.Categorical(frame[source_key], categories=["paired", "rna_only", "atac_only"])
    result.obs = frame.loc[result.obs_names]
    counts = frame[source_key].value_counts()
    logger.info("mosaic: %s", ", ".join(f"{int(counts[k])} {k}" for k in counts.index if counts[k]))
    return result
