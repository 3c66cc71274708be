"""Differential expression and accessibility from the model's decoded, batch-corrected profiles.

For two groups of cells A and B (or A against all other cells) and every feature f, the
quantity tested is the log2 ratio of the groups' mean normalised profiles,

    LFC_f = log2(mean_{i in A} x̂_if + ε) − log2(mean_{i in B} x̂_if + ε),

where x̂_i is cell i's decoded profile (fractions summing to 1 over the modality's
features). ε is ``pseudocount`` counts at the median library size of the modality, so
features a typical cell would not detect do not get large ratios.

Batch is set aside in two ways (``batch_correction``, :data:`BATCH_CORRECTIONS`; default
``"both"``): every cell is decoded with its covariate representations replaced by the mean
of one known class of each covariate, the classes taken in turn within each group and
batch, so both sides are decoded equally under every batch (``"covariate"``); and each
side's mean is taken within each batch (covariate class combination), the batches weighted
alike on both sides by n1 n2 / (n1 + n2), so a batch difference the model kept in the basal
representation cannot make a difference between the sides (``"within"``).

The uncertainty is that of the cells drawn: each group's cells are resampled with
replacement (``n_bootstrap`` times), and

* ``proba_de`` is the fraction of resamples with |LFC| ≥ ``delta``;
* ``bayes_factor`` is log(p / (1 − p)) of that probability (p smoothed by half a resample);
* ``is_de_fdr`` marks the largest set of features, taken in decreasing ``proba_de``, whose
  mean ``1 − proba_de`` (the posterior expected false discovery proportion) is at most
  ``fdr``, the rule scvi-tools' ``differential_expression`` uses.

At most ``n_cells`` cells of each group and batch are decoded (drawn without replacement);
the rest of a one-against-rest comparison pools the other groups by their sizes.
Features are processed in blocks, so no cells × all-features matrix is ever held.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data import MODALITIES, positions
from ..profiles import FeatureBlocks
from ..settings import settings as package_settings
from .cells import CellSource, cell_representations
from .tables import cell_groups, check_modality, label_codes

__all__ = ["DIFFERENTIAL_COLUMNS", "change_statistics", "differential_test", "expected_fdr_calls", "rank_genes_groups"]

logger = logging.getLogger(__name__)

#: Columns of :func:`differential_test`'s table, in order (the index holds the feature names).
DIFFERENTIAL_COLUMNS = [
    "comparison",
    "group1",
    "group2",
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "is_de_fdr",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_low",
    "lfc_high",
    "scale1",
    "scale2",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
]

REST = "rest"

#: ``batch_correction`` modes: whether cells are decoded at the covariates' class means, and
#: whether the groups are compared within each batch (covariate class combination).
BATCH_CORRECTIONS = {
    "both": (True, True),
    "covariate": (True, False),
    "within": (False, True),
    "none": (False, False),
}


# ----------------------------------------------------------------------------- statistics
def change_statistics(mean1: np.ndarray, mean2: np.ndarray, *, delta: float, epsilon: float) -> dict[str, np.ndarray]:
    """Log fold changes and the probability of a change of at least ``delta``.

    Parameters
    ----------
    mean1, mean2
        (B + 1, F) group means of the normalised profiles: row 0 from the cells drawn, rows
        1..B from resamples of them.
    delta
        Smallest |log2 fold change| that counts as a change.
    epsilon
        Added to both means before the logarithm.

    Returns
    -------
    dict
        (F,) arrays: ``lfc_mean`` (row 0's LFC), ``lfc_median``, ``lfc_std``, ``lfc_low`` and
        ``lfc_high`` (2.5 % and 97.5 % quantiles) over the resamples, ``proba_de`` (fraction of
        resamples with |LFC| ≥ delta), ``proba_not_de`` and ``bayes_factor``.
    """
    lfc = np.log2(mean1.astype(np.float64) + epsilon) - np.log2(mean2.astype(np.float64) + epsilon)
    boot = lfc[1:]
    n_boot = len(boot)
    hits = (np.abs(boot) >= delta).sum(axis=0)
    proba = hits / n_boot
    low, median, high = np.quantile(boot, [0.025, 0.5, 0.975], axis=0)
    return {
        "lfc_mean": lfc[0].copy(),  # a copy: a view would keep all resamples alive
        "lfc_median": median,
        "lfc_std": boot.std(axis=0, ddof=1),
        "lfc_low": low,
        "lfc_high": high,
        "proba_de": proba,
        "proba_not_de": 1.0 - proba,
        "bayes_factor": np.log((hits + 0.5) / (n_boot - hits + 0.5)),
    }


def expected_fdr_calls(proba_de: np.ndarray, fdr: float) -> np.ndarray:
    """The largest set of features, taken in decreasing ``proba_de``, whose mean
    ``1 − proba_de`` is at most ``fdr``.

    Returns
    -------
    (F,) bool, True for the called features.
    """
    proba_de = np.asarray(proba_de, dtype=np.float64)
    order = np.argsort(-proba_de, kind="stable")
    running = np.cumsum(1.0 - proba_de[order]) / np.arange(1, len(order) + 1)
    n_called = int(np.searchsorted(running, fdr, side="right"))  # running is non-decreasing
    calls = np.zeros(len(proba_de), dtype=bool)
    calls[order[:n_called]] = True
    return calls


# ----------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class _Settings:
    modality: str
    delta: float
    fdr: float
    pseudocount: float
    batch_correction: str
    n_cells: int
    n_bootstrap: int
    seed: int
    memory_budget_mb: float

    @classmethod
    def checked(cls, modality, delta, fdr, pseudocount, batch_correction, n_cells, n_bootstrap, seed, budget):
        check_modality(modality)
        checks = [
            ("delta", delta, delta >= 0, ">= 0"),
            ("fdr", fdr, 0 < fdr < 1, "in (0, 1)"),
            ("pseudocount", pseudocount, pseudocount > 0, "> 0"),
            ("n_cells", n_cells, int(n_cells) == n_cells and n_cells >= 2, "an integer >= 2"),
            ("n_bootstrap", n_bootstrap, int(n_bootstrap) == n_bootstrap and n_bootstrap >= 20, "an integer >= 20"),
            ("memory_budget_mb", budget, budget > 0, "> 0"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name} must be {allowed}, got {value!r}")
        mode = {True: "both", False: "none"}.get(batch_correction, batch_correction)
        if mode not in BATCH_CORRECTIONS:
            raise ValueError(f"batch_correction must be True, False or one of {list(BATCH_CORRECTIONS)}, got {mode!r}")
        return cls(
            modality, float(delta), float(fdr), float(pseudocount), mode, int(n_cells),
            int(n_bootstrap), int(seed), float(budget),
        )  # fmt: skip


@dataclass(frozen=True)
class _Cells:
    """The labelled cells with what the tests need of them."""

    names: pd.Index  # (n,)
    latent: np.ndarray  # (n, L)
    covariate: np.ndarray  # (n, d * V) the cells' own covariate representations
    counts: sp.csr_matrix  # (n, len(observed)) counts of the modality
    observed: np.ndarray  # model feature positions of the counts' columns
    library: np.ndarray  # (n,) the modality's library size the model uses (NaN: unknown)
    codes: np.ndarray  # (n,) group codes
    group_names: list[str]
    strata: np.ndarray  # (n,) code of each cell's covariate class combination (its batch)

    @property
    def n_strata(self) -> int:
        return int(self.strata.max()) + 1 if len(self.strata) else 1


def _strata(labels: np.ndarray) -> np.ndarray:
    """(n,) code of each row's combination of covariate classes, from (n, V) labels."""
    if labels.shape[1] == 0:
        return np.zeros(len(labels), dtype=np.int64)
    return np.unique(labels.astype(str), axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _labels_from_values(values, names: pd.Index) -> pd.Series:
    """Labels given as a Series (by cell name) or an array aligned to ``names``."""
    if isinstance(values, pd.Series):
        missing = ~names.isin(values.index)
        if missing.all():
            raise ValueError("groupby: none of the cells' names is in the Series' index")
        return values.reindex(names)
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != len(names):
        raise ValueError(f"groupby: labels have shape {arr.shape}; expected ({len(names)},), one per cell")
    return pd.Series(arr, index=names)


def _model_cells(model, groupby, modality: str) -> _Cells:
    """The model's training and validation cells, with the counts it was trained on."""
    data = model.data
    if data is None:
        raise ValueError("this model was loaded without its data: pass data= (the cells and their counts)")
    have = np.flatnonzero((model.split != "none").to_numpy())
    data_row = np.cumsum(model.description.kept) - 1
    rows = data_row[have]
    names = model.obs_names[have]
    if isinstance(groupby, str):
        keys = [k for k in [data.cell_type_key, *data.covariate_keys] if k]
        if groupby == data.cell_type_key:
            codes, group_names = data.cell_type_codes[rows], list(data.cell_type_categories)
        elif groupby in data.covariate_keys:
            v = data.covariate_keys.index(groupby)
            codes, group_names = data.covariate_codes[rows, v], list(data.covariate_categories[v])
        else:
            raise ValueError(
                f"groupby: the model knows the labels of {keys} only; pass data= holding obs column "
                f"{groupby!r}, or the labels themselves (a Series by cell name)"
            )
    else:
        codes, group_names = label_codes(_labels_from_values(groupby, model.obs_names).iloc[have])
    j = MODALITIES.index(modality)
    try:
        library = model.get_library_size()[have, j]
    except ValueError:  # a model file without library sizes
        library = data.library_size[rows, j]
    counts = data.counts[modality][rows]
    observed = np.arange(counts.shape[1])
    return _Cells(
        names, model.get_latent_representation()[have], model.get_covariate_matrix()[have], counts, observed,
        np.asarray(library, dtype=np.float64), np.asarray(codes, dtype=np.int64), group_names,
        _strata(data.covariate_codes[rows]),
    )  # fmt: skip


def _data_cells(model, data, groupby, modality: str, source: CellSource) -> _Cells:
    """Cells of ``data``: the model's own representations of its cells, the others' from an embedding."""
    from ..query import read_query

    query = read_query(
        data,
        var_names=model.var_names,
        modality_names=model.modality_names(source.rna_mod, source.atac_mod),
        covariate_keys=model.covariate_keys,
        layer=source.layer,
        min_feature_fraction=0,
    )
    if modality not in query.counts:
        raise ValueError(f"the data has no {modality.upper()} modality; its counts are needed for the raw columns")
    labels = np.stack(query.covariate_labels, axis=1) if query.covariate_labels else np.zeros((query.n_cells, 0))
    rows = positions(query.obs_names, source.cells, "cells")
    if isinstance(groupby, str):
        codes, group_names = cell_groups(data, groupby, query.obs_names, rows)
    else:
        codes, group_names = label_codes(_labels_from_values(groupby, query.obs_names).iloc[rows])
    j = MODALITIES.index(modality)
    has = query.present[rows, j]
    if not has.all():
        logger.info("%d cells lack %s counts: they are decoded but left out of the raw columns", (~has).sum(), modality)
    reps = cell_representations(model, data, query, rows, source)
    return _Cells(
        query.obs_names[rows], reps.latent, reps.covariate, query.counts[modality][rows], query.observed[modality],
        np.where(has, reps.library[:, j], np.nan), codes, group_names, _strata(labels[rows]),
    )  # fmt: skip


# ----------------------------------------------------------------------------- comparisons
@dataclass(frozen=True)
class _Comparison:
    name: str
    group1: str
    group2: str
    weights1: np.ndarray  # (G * S,) weights of the (group, stratum) units' means making side 1
    weights2: np.ndarray  # (G * S,)
    groups1: np.ndarray  # (G,) bool, the groups of side 1
    groups2: np.ndarray  # (G,) bool


def _label_list(value, what: str, group_names: list[str], sizes: np.ndarray) -> list[int]:
    values = [value] if isinstance(value, str) or np.isscalar(value) else list(value)
    out = []
    for v in values:
        if str(v) not in group_names:
            raise ValueError(f"{what}: no group {v!r}; groups: {group_names}")
        g = group_names.index(str(v))
        if sizes[g].sum() == 0:
            raise ValueError(f"{what}: group {v!r} has no cells")
        out.append(g)
    return out


def _side_weights(counts1: np.ndarray, counts2: np.ndarray, within: bool) -> tuple[np.ndarray, np.ndarray]:
    """Unit weights of two sides from their (G, S) cell counts.

    Pooled: each side is the mean over its cells. Within batches: each side's mean within
    each stratum, the strata weighted alike on both sides by n1 n2 / (n1 + n2) (zero where
    a side has no cells), so a difference between batches cannot make a difference between
    the sides.
    """
    if not within:
        return (counts1 / counts1.sum()).ravel(), (counts2 / counts2.sum()).ravel()
    n1, n2 = counts1.sum(axis=0), counts2.sum(axis=0)  # (S,)
    both = (n1 > 0) & (n2 > 0)
    w = np.where(both, n1 * n2 / np.maximum(n1 + n2, 1), 0.0)
    if w.sum() == 0:
        raise ValueError(
            "no batch (covariate class combination) holds cells of both sides, so they cannot be compared "
            "within batches; use batch_correction='covariate' (decoding at the class means only)"
        )
    w = w / w.sum()
    return (counts1 * (w / np.maximum(n1, 1))).ravel(), (counts2 * (w / np.maximum(n2, 1))).ravel()


def _comparisons(group1, group2, group_names: list[str], sizes: np.ndarray, within: bool) -> list[_Comparison]:
    """Each group of ``group1`` (None: every group with cells) against ``group2`` (None: the rest).

    ``sizes`` is the (G, S) number of cells of each group in each stratum.
    """
    n_groups = len(group_names)
    firsts = (
        [g for g in range(n_groups) if sizes[g].sum()]
        if group1 is None
        else _label_list(group1, "group1", group_names, sizes)
    )
    second = None if group2 is None else _label_list(group2, "group2", group_names, sizes)
    if second is not None and len(second) != 1:
        raise ValueError(f"group2 must be one group (or None for the rest), got {group2!r}")
    out = []
    for g in firsts:
        one = np.zeros(n_groups, dtype=bool)
        one[g] = True
        if second is None:
            other, name2 = ~one, REST
            if sizes[other].sum() == 0:
                raise ValueError(f"group {group_names[g]!r} holds every cell: there is no rest to compare with")
        else:
            if second[0] == g:
                raise ValueError(f"group1 and group2 are the same group {group_names[g]!r}")
            other, name2 = np.zeros(n_groups, dtype=bool), group_names[second[0]]
            other[second[0]] = True
        w1, w2 = _side_weights(sizes * one[:, None], sizes * other[:, None], within)
        out.append(_Comparison(f"{group_names[g]} vs {name2}", group_names[g], name2, w1, w2, one, other))
    return out


# ----------------------------------------------------------------------------- decoding
@dataclass(frozen=True)
class _Draw:
    """The cells drawn from each unit (group and batch) and their resampling weights."""

    rows: np.ndarray  # (n_drawn,) rows of _Cells, group by group
    groups: list[slice]  # each unit's span of ``rows``
    weights: list[np.ndarray]  # each unit's (B + 1, n_u) float32 weights, rows summing to 1


def _draw(codes: np.ndarray, n_units: int, n_cells: int, n_bootstrap: int, rng: np.random.Generator) -> _Draw:
    """At most ``n_cells`` cells of each unit (group and batch), and their resampling weights."""
    rows, spans, weights, start = [], [], [], 0
    for g in range(n_units):
        members = np.flatnonzero(codes == g)
        if len(members) > n_cells:
            members = np.sort(rng.choice(members, n_cells, replace=False))
        n = len(members)
        w = np.full((n_bootstrap + 1, n), 1.0 / max(n, 1), dtype=np.float32)
        if n:
            w[1:] = rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap) / n
        rows.append(members)
        spans.append(slice(start, start + n))
        weights.append(w)
        start += n
    return _Draw(np.concatenate(rows), spans, weights)


def _reference_covariates(module, cells: _Cells, draw: _Draw, batch_correction: bool, rng) -> np.ndarray:
    """Covariate input of each drawn cell: its own, or each covariate's class means in turn within each group."""
    own = cells.covariate[draw.rows]
    if not batch_correction or own.shape[1] == 0:
        return own
    out = np.empty_like(own)
    col = 0
    for mixture in module.covariates:
        means = mixture.mean.detach().cpu().numpy().astype(np.float32)  # (C_v, d)
        d = means.shape[1]
        for span in draw.groups:
            n = span.stop - span.start
            classes = rng.permutation(n) % len(means)
            out[span, col : col + d] = means[classes]
        col += d
    return out


def _raw_sums(cells: _Cells, n_groups: int) -> dict[str, np.ndarray]:
    """Per group (G, F_obs): sums of counts, of non-zero indicators and of counts per 10,000; cells per group."""
    has = ~np.isnan(cells.library)
    keep = np.flatnonzero(has & (cells.codes >= 0))
    x = cells.counts[keep]
    indicator = sp.csr_matrix(
        (np.ones(len(keep)), (cells.codes[keep], np.arange(len(keep)))), shape=(n_groups, len(keep))
    )
    totals = np.asarray(x.sum(axis=1)).ravel()
    scaled = sp.diags(1e4 / np.maximum(totals, 1.0)) @ x
    nonzero = x.copy()
    nonzero.data = (nonzero.data > 0).astype(np.float64)
    return {
        "raw_mean": np.asarray((indicator @ x).todense()),
        "non_zeros_proportion": np.asarray((indicator @ nonzero).todense()),
        "raw_normalized_mean": np.asarray((indicator @ scaled).todense()),
        "n": np.asarray(indicator.sum(axis=1)).ravel(),
    }


def _side_raw(raw: dict[str, np.ndarray], groups: np.ndarray, observed: np.ndarray, n_features: int) -> dict:
    """Pooled raw statistics over the cells of ``groups`` ((G,) bool), on all model features (NaN: not in the data)."""
    sel = np.flatnonzero(groups)
    n = raw["n"][sel].sum()
    out = {}
    for key in ("raw_mean", "non_zeros_proportion", "raw_normalized_mean"):
        full = np.full(n_features, np.nan)
        if n > 0:
            full[observed] = raw[key][sel].sum(axis=0) / n
        out[key] = full
    return out


def _block_size(n_drawn: int, n_units: int, n_bootstrap: int, budget_mb: float) -> int:
    """Features per block: the drawn cells' fractions and the units' resampled means within the budget."""
    per_feature = 4 * (2 * n_drawn + 3 * n_units * (n_bootstrap + 1)) + 8 * 8 * (n_bootstrap + 1)
    return max(64, int(budget_mb * 2**20 // per_feature))


def _test_blocks(blocks: FeatureBlocks, draw: _Draw, comparisons, cols, settings: _Settings, epsilon, progress_bar):
    """Statistics of every comparison over features ``cols``, a block of features at a time."""
    from tqdm.auto import tqdm

    n_units = len(draw.groups)
    size = _block_size(len(draw.rows), n_units, settings.n_bootstrap, settings.memory_budget_mb)
    out = [{} for _ in comparisons]
    sides = np.stack([w for c in comparisons for w in (c.weights1, c.weights2)]).astype(np.float32)  # (2C, U)
    bar = tqdm(
        total=len(cols),
        desc="Differential",
        unit="feature",
        disable=None if package_settings.shows_progress(progress_bar) else True,
    )
    for start in range(0, len(cols), size):
        block = cols[start : start + size]
        fractions = blocks.fractions(block)  # (n_drawn, f)
        means = np.empty((n_units, settings.n_bootstrap + 1, len(block)), dtype=np.float32)
        for u, (w, span) in enumerate(zip(draw.weights, draw.groups, strict=True)):
            np.matmul(w, fractions[span], out=means[u])
        both = (sides @ means.reshape(len(means), -1)).reshape(len(comparisons), 2, *means.shape[1:])
        for c, (m1, m2) in enumerate(both):  # each (B + 1, f)
            stats = change_statistics(m1, m2, delta=settings.delta, epsilon=epsilon)
            stats["scale1"], stats["scale2"] = m1[0].astype(np.float64), m2[0].astype(np.float64)
            for key, values in stats.items():
                out[c].setdefault(key, []).append(values)
        bar.update(len(block))
    bar.close()
    return [{key: np.concatenate(parts) for key, parts in stats.items()} for stats in out]


def _table(comparisons, stats, cells: _Cells, cols, feature_names: pd.Index, settings: _Settings) -> pd.DataFrame:
    """One block of rows per comparison, most likely changes first."""
    raw = _raw_sums(cells, len(cells.group_names))
    n_features = len(feature_names)
    frames = []
    for comparison, values in zip(comparisons, stats, strict=True):
        side = {}
        for k, groups in (("1", comparison.groups1), ("2", comparison.groups2)):
            for key, full in _side_raw(raw, groups, cells.observed, n_features).items():
                side[f"{key}{k}"] = full[cols]
        frame = pd.DataFrame(
            {
                "comparison": comparison.name,
                "group1": comparison.group1,
                "group2": comparison.group2,
                **values,
                **side,
                "is_de_fdr": expected_fdr_calls(values["proba_de"], settings.fdr),
            },
            index=pd.Index(feature_names[cols], name="feature"),
        )
        order = np.lexsort((-np.abs(frame["lfc_mean"].to_numpy()), -frame["proba_de"].to_numpy()))
        frames.append(frame.iloc[order][DIFFERENTIAL_COLUMNS])
    return pd.concat(frames)


def differential_test(
    model,
    data: Any = None,
    *,
    groupby,
    group1=None,
    group2=None,
    modality: str = "rna",
    features=None,
    cells=None,
    embedding=None,
    delta: float = 0.25,
    fdr: float = 0.05,
    pseudocount: float = 0.1,
    batch_correction: bool | str = True,
    n_cells: int = 1000,
    n_bootstrap: int = 200,
    seed: int = 0,
    memory_budget_mb: float = 512,
    rna_mod: str | None = None,
    atac_mod: str | None = None,
    layer: str | None = None,
    infer_kwargs: dict | None = None,
    progress_bar: bool = True,
) -> pd.DataFrame:
    """Differential expression (``modality="rna"``) or accessibility (``"atac"``) between groups of cells.

    ``batch_correction`` is ``True`` (``"both"``), ``False`` (``"none"``), ``"covariate"`` or
    ``"within"``; ``n_cells`` bounds the cells decoded per group and batch.

    The method is described in :mod:`multidgd.analysis.differential`; the arguments are those of
    :meth:`multidgd.DGD.differential_expression`.
    """
    settings = _Settings.checked(
        modality, delta, fdr, pseudocount, batch_correction, n_cells, n_bootstrap, seed, memory_budget_mb
    )
    feature_names = model.var_names[modality]
    cols = positions(feature_names, features, "genes" if modality == "rna" else "peaks")
    if data is None:
        if cells is not None or embedding is not None:
            raise ValueError("cells= and embedding= select cells of data=; pass data as well")
        prepared = _model_cells(model, groupby, modality)
    else:
        source = CellSource(cells, groupby, embedding, rna_mod, atac_mod, layer, infer_kwargs)
        prepared = _data_cells(model, data, groupby, modality, source)
    n_groups, n_strata = len(prepared.group_names), prepared.n_strata
    decode_at_means, within = BATCH_CORRECTIONS[settings.batch_correction]
    units = np.where(prepared.codes >= 0, prepared.codes * n_strata + prepared.strata, -1)
    sizes = np.bincount(units[units >= 0], minlength=n_groups * n_strata).reshape(n_groups, n_strata)
    comparisons = _comparisons(group1, group2, prepared.group_names, sizes, within)
    library = prepared.library[~np.isnan(prepared.library)]
    if not len(library):
        raise ValueError(f"no cell has {modality.upper()} counts")
    epsilon = settings.pseudocount / float(np.median(library))
    rng = np.random.default_rng(settings.seed)
    draw = _draw(units, n_groups * n_strata, settings.n_cells, settings.n_bootstrap, rng)
    covariate = _reference_covariates(model.module, prepared, draw, decode_at_means, rng)
    with torch.no_grad():
        blocks = FeatureBlocks(model.module, prepared.latent[draw.rows], covariate, modality)
        stats = _test_blocks(blocks, draw, comparisons, cols, settings, epsilon, progress_bar)
    table = _table(comparisons, stats, prepared, cols, feature_names, settings)
    table.attrs.update(
        method="multidgd", modality=modality, delta=settings.delta, fdr=settings.fdr,
        pseudocount=settings.pseudocount, epsilon=epsilon, batch_correction=settings.batch_correction,
        n_bootstrap=settings.n_bootstrap, seed=settings.seed, groupby=groupby if isinstance(groupby, str) else None,
        n_cells={name: int(n) for name, n in zip(prepared.group_names, sizes.sum(axis=1), strict=True)},
    )  # fmt: skip
    return table


def rank_genes_groups(table: pd.DataFrame) -> dict:
    """:func:`differential_test`'s one-against-rest table in the form of scanpy's ``rank_genes_groups``.

    Store the result in ``adata.uns[key]`` and pass ``key=`` to ``sc.pl.rank_genes_groups_*``
    (the AnnData must hold the same features). Per group the features are ordered by
    ``score = lfc_mean × proba_de`` (largest first: the surest increases lead); ``pvals`` holds
    ``proba_not_de`` and ``pvals_adj`` the expected false discovery proportion of calling every
    feature up to that rank.

    Returns
    -------
    dict
        ``params``, ``names``, ``scores``, ``logfoldchanges``, ``pvals``, ``pvals_adj`` (record
        arrays with one field per group).
    """
    missing = set(DIFFERENTIAL_COLUMNS[:6]) - set(table.columns)
    if missing:
        raise ValueError(f"not a differential table: missing columns {sorted(missing)}")
    if not (table["group2"] == REST).all():
        raise ValueError("rank_genes_groups needs one-against-rest comparisons (group2=None)")
    groups = list(dict.fromkeys(table["group1"]))
    columns = {key: {} for key in ("names", "scores", "logfoldchanges", "pvals", "pvals_adj")}
    for g in groups:
        part = table[table["group1"] == g]
        score = (part["lfc_mean"] * part["proba_de"]).to_numpy()
        order = np.argsort(-score, kind="stable")
        not_de = part["proba_not_de"].to_numpy()[order]
        columns["names"][g] = part.index.to_numpy()[order].astype(object)
        columns["scores"][g] = score[order].astype(np.float32)
        columns["logfoldchanges"][g] = part["lfc_mean"].to_numpy()[order].astype(np.float32)
        columns["pvals"][g] = not_de
        columns["pvals_adj"][g] = np.cumsum(not_de) / np.arange(1, len(order) + 1)
    lengths = {len(v) for v in columns["names"].values()}
    if len(lengths) != 1:
        raise ValueError("the groups of the table hold different features")
    out = {
        "params": {
            "groupby": table.attrs.get("groupby") or "group",
            "reference": "rest",
            "method": "multidgd",
            "use_raw": False,
            "layer": None,
            "corr_method": "expected false discovery proportion",
        }
    }
    for key, per_group in columns.items():
        out[key] = pd.DataFrame(per_group).to_records(index=False)
    return out
