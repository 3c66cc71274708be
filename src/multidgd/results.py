"""Per-cell results of a model and their one writer into AnnData/MuData.

:class:`Clustering` holds mixture-component assignments, :class:`Embedding` the results
of placing new cells into a trained model, and :func:`write_results` stores either kind
(with the representations) in a MuData or AnnData; :func:`multidgd.io.add_results` and
:meth:`Embedding.add_to` both use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .data import MODALITIES

__all__ = ["Clustering", "Embedding", "covariate_index", "write_results"]


@dataclass(frozen=True)
class Clustering:
    """Mixture-component assignments of cells.

    Attributes
    ----------
    labels
        (n_cells,) int64 argmax component; -1 for cells without a representation.
    probabilities
        (n_cells, K) float32 responsibilities p(k | z), or p(k | counts) when computed from
        the counts (:meth:`multidgd.DGD.cluster` with data); NaN rows for cells without one.
    temperature
        The temperature of p(k | counts) (None for p(k | z)).

    Unpacks as ``labels, probabilities = model.cluster()``.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    temperature: float | None = None

    def __iter__(self):
        """Yield ``labels`` and ``probabilities`` (for unpacking)."""
        return iter((self.labels, self.probabilities))


def covariate_index(keys: list[str], key: str | None) -> int:
    """Find the position of covariate ``key`` in ``keys``, with clear errors.

    Parameters
    ----------
    keys
        The model's covariate keys.
    key
        The covariate asked for; ``None`` means the only one.

    Returns
    -------
    int
        Position of ``key`` in ``keys``.
    """
    if not keys:
        raise ValueError("the model has no covariates")
    if key is None:
        if len(keys) > 1:
            raise ValueError(f"several covariates; pass key= one of {keys}")
        return 0
    if key not in keys:
        raise ValueError(f"covariate {key!r} unknown; the model has {keys}")
    return keys.index(key)


def write_results(
    data: Any,
    rows: np.ndarray,
    *,
    latent: np.ndarray,
    covariates: Mapping[str, np.ndarray],
    clustering: Clustering,
    prefix: str,
    obs: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write per-cell results into ``data`` (a MuData or AnnData), in place.

    Sets ``obsm["X_<prefix>"]``, ``obsm["X_<prefix>_<covariate>"]`` per covariate,
    ``obs["<prefix>_cluster"]`` (categorical over ``0 .. K-1``, NaN where the label is -1),
    ``obs["<prefix>_cluster_probability"]`` (the probability of the cell's cluster: the
    largest responsibility p(k | z), or p(k | counts) of that cluster; NaN where unknown)
    and ``obs["<prefix>_<name>"]`` for each entry of ``obs``.

    Parameters
    ----------
    data
        MuData or AnnData whose cells are written.
    rows
        (n_obs,) int position in the result arrays of each cell of ``data``.
    latent
        (n, L) basal representations.
    covariates
        Covariate key -> (n, d) representation.
    clustering
        Labels and responsibilities of the ``n`` cells.
    prefix
        Prefix of the keys written.
    obs
        Further per-cell columns, name (without prefix) -> (n,) values.
    """
    data.obsm[f"X_{prefix}"] = latent[rows]
    for key, values in covariates.items():
        data.obsm[f"X_{prefix}_{key}"] = values[rows]
    labels = clustering.labels[rows]
    probs = clustering.probabilities[rows]
    data.obs[f"{prefix}_cluster"] = pd.Categorical(
        np.where(labels >= 0, labels.astype(str), None),
        categories=[str(k) for k in range(clustering.probabilities.shape[1])],
    )
    best = np.full(len(rows), np.nan, dtype=probs.dtype)
    ok = ~np.isnan(probs).any(axis=1) & (labels >= 0)
    best[ok] = probs[ok, labels[ok]]
    data.obs[f"{prefix}_cluster_probability"] = best
    for name, values in (obs or {}).items():
        data.obs[f"{prefix}_{name}"] = values[rows]


@dataclass
class Embedding:
    """New cells placed into a trained model (returned by :meth:`multidgd.DGD.infer`).

    Attributes
    ----------
    obs_names
        Cell names, in the data's order.
    latent
        (n, L) basal representations.
    covariate
        (n, d * V) covariate representations, ``d`` columns per covariate key.
    covariate_keys
        The model's covariate keys.
    cluster
        (n,) argmax basal-mixture component.
    cluster_probabilities
        (n, K) responsibilities p(k | z).
    nll
        DataFrame indexed by cell with ``nll_rna`` and ``nll_atac``: the per-cell NB
        negative log-likelihood over the features present (NaN where the cell lacks the
        modality).
    observed
        (n, 2) bool, which modalities each cell has (columns ``rna``, ``atac``).
    library_size
        (n, 2) library size over all of the model's features, used to turn fractions into
        counts: for an observed modality the observed total divided by the decoded fraction
        of the features present; for a missing one the value of the obs column given, else
        an estimate: the cell's library size in the modality it has times the median
        ratio of the two library sizes over the 15 training cells nearest in the basal space.
    library_size_source
        (n, 2) str: ``observed``, ``given`` or ``estimated``.
    n_absent_features
        Modality -> number of model features missing from the data.
    start_candidate
        (n, 2) int: the basal component and the covariate-class combination each cell
        started from.
    learned_classes
        Covariate key -> classes added to the model by this call.
    candidates
        The best-start candidates and each cell's NLL at each
        (:class:`multidgd.inference.Candidates`): a modality a cell lacks is predicted as the
        posterior-weighted mean of the candidates' decoded profiles.
    temperature
        (n,) temperature of each cell's posterior weights (:mod:`multidgd.prediction`).
    """

    obs_names: pd.Index
    latent: np.ndarray
    covariate: np.ndarray
    covariate_keys: list[str]
    cluster: np.ndarray
    cluster_probabilities: np.ndarray
    nll: pd.DataFrame
    observed: np.ndarray
    library_size: np.ndarray
    library_size_source: np.ndarray
    n_absent_features: dict[str, int]
    start_candidate: np.ndarray
    learned_classes: dict[str, list[str]] = field(default_factory=dict)
    candidates: Any = None
    temperature: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.obs_names)

    @property
    def prediction_weights(self) -> np.ndarray:
        """(n, J) posterior weight of each best-start candidate given what each cell has
        (see :mod:`multidgd.prediction`); rows sum to 1.
        """
        from .prediction import posterior_weights

        if self.candidates is None:
            raise ValueError("this embedding holds no best-start candidates")
        return posterior_weights(self.candidates.nll, self.candidates.log_prior, self.temperature)

    @property
    def prediction_certainty(self) -> np.ndarray:
        """(n,) how sure the prediction of a missing modality is: 1 minus the normalised
        entropy of :attr:`prediction_weights` (1: one candidate; 0: all equally likely).
        """
        from .prediction import prediction_certainty

        return prediction_certainty(self.prediction_weights)

    def covariate_representation(self, key: str | None = None) -> np.ndarray:
        """Return the (n, d) representation of one covariate (default: the only one).

        Parameters
        ----------
        key
            Covariate key; ``None`` for the only one.

        Returns
        -------
        numpy.ndarray
            (n, d) representation.
        """
        v = covariate_index(self.covariate_keys, key)
        d = self.covariate.shape[1] // len(self.covariate_keys)
        return self.covariate[:, v * d : (v + 1) * d]

    def add_to(self, data: Any, prefix: str = "multidgd") -> None:
        """Write the results into ``data`` (MuData or AnnData with these cells), in place.

        Sets ``obsm["X_<prefix>"]``, ``obsm["X_<prefix>_<covariate>"]``,
        ``obs["<prefix>_cluster"]``, ``obs["<prefix>_cluster_probability"]``,
        ``obs["<prefix>_nll_rna"]``, ``obs["<prefix>_nll_atac"]`` and
        ``obs["<prefix>_prediction_certainty"]`` (:attr:`prediction_certainty`).

        Parameters
        ----------
        data
            MuData or AnnData holding only cells of this embedding (in any order).
        prefix
            Prefix of the keys written.
        """
        index = pd.Index(data.obs_names.astype(str))
        pos = self.obs_names.get_indexer(index)
        if (pos < 0).any():
            raise ValueError(
                f"{int((pos < 0).sum())} cells of the data were not embedded, e.g. {index[pos < 0][:3].tolist()}"
            )
        write_results(
            data,
            pos,
            latent=self.latent,
            covariates={key: self.covariate_representation(key) for key in self.covariate_keys},
            clustering=Clustering(labels=self.cluster, probabilities=self.cluster_probabilities),
            prefix=prefix,
            obs={
                **{f"nll_{m}": self.nll[f"nll_{m}"].to_numpy() for m in MODALITIES},
                **({} if self.candidates is None else {"prediction_certainty": self.prediction_certainty}),
            },
        )
