"""DGD: the user-facing model, wiring data, network, training and checkpoints together."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import checkpoint, distributed
from .checkpoint import ModelDescription, TrainingState
from .config import ModelConfig, TrainConfig
from .data import MODALITIES, MultiomeData, positions, read_multiome
from .encoder import (
    EncoderConfig,
    StartEncoder,
    encoder_from_payload,
    encoder_payload,
    fit_encoder,
    reference_statistics,
)
from .inference import check_infer_args, embedding_of, estimate_library, place_cells, resolve_start
from .initialization import choose_n_components, initial_state
from .module import DGDModule
from .prediction import (
    candidate_profiles,
    check_prediction,
    check_temperature,
    component_posterior,
    fit_cluster_temperature,
    fit_denoise_weight,
)
from .profiles import CandidateMixture, ProfileRequest, decoded_fractions, normalized_profiles
from .query import read_query, training_query
from .results import Clustering, Embedding, covariate_index
from .settings import settings
from .train import fit, per_cell_nll

__all__ = ["DGD", "resolve_device"]

logger = logging.getLogger(__name__)


def _model_file(path: str | Path) -> Path:
    """The model file of ``path``: itself, or ``model.pt`` inside a directory (existing, or named without a suffix)."""
    path = Path(path)
    return path / "model.pt" if path.is_dir() or not path.suffix else path


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other values are checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available; use 'cpu' or 'auto'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


class DGD:
    """multiDGD: a decoder-only generative model of paired RNA + ATAC counts.

    Parameters
    ----------
    data
        MuData with RNA and ATAC modalities, or an AnnData with ``var["feature_types"]``.
        Raw counts (sparse or dense) in ``X`` or ``layer``. Not modified.
    rna_mod, atac_mod
        Modality names in a MuData.
    layer
        Layer with raw counts in both modalities (default ``X``).
    cell_type_key
        ``obs`` column of cell types; its number of classes sets the basal components K
        unless ``config.n_components`` is given. Also stratifies the validation split.
        Without either, K is chosen from the data
        (:func:`~multidgd.initialization.choose_n_components`: Leiden clusters of the PCA
        start) and ``n_components_choice`` says how.
    covariate_keys
        ``obs`` columns of categorical covariates (batch, sample, donor, ...), each with its
        own supervised 2-D representation and mixture.
    split_key
        Optional ``obs`` column with train / validation / test per cell. Without it a
        seeded validation split of ``TrainConfig.validation_fraction`` is made at training.
        Test cells are left out of training.
    config
        :class:`ModelConfig`.
    drop_empty_cells
        Drop (with a warning) cells with zero counts in a modality instead of raising.

    Examples
    --------
    >>> model = multidgd.DGD(mdata, cell_type_key="cell_type", covariate_keys=["sample"])
    >>> model.train(max_epochs=500, seed=0)
    >>> mdata.obsm["X_multidgd"] = model.get_latent_representation()
    """

    def __init__(
        self,
        data: Any,
        *,
        rna_mod: str = "rna",
        atac_mod: str = "atac",
        layer: str | None = None,
        cell_type_key: str | None = None,
        covariate_keys: Sequence[str] | str = (),
        split_key: str | None = None,
        config: ModelConfig | None = None,
        drop_empty_cells: bool = True,
    ) -> None:
        config = config or ModelConfig()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self.data: MultiomeData | None = read_multiome(
            data,
            rna_mod=rna_mod,
            atac_mod=atac_mod,
            layer=layer,
            cell_type_key=cell_type_key,
            covariate_keys=covariate_keys,
            split_key=split_key,
            drop_empty_cells=drop_empty_cells,
        )
        #: how K was chosen when neither ``config.n_components`` nor a cell-type key gave it
        self.n_components_choice: str | None = None
        if config.n_components is None and self.data.cell_type_categories is None:
            k, self.n_components_choice = choose_n_components(self.data, config.latent_dim)
            logger.info("%s", self.n_components_choice)
            self.config = config = replace(config, n_components=k)
        #: names, labels and K: all the model knows of its data without holding it
        self.description = ModelDescription.of_data(self.data, config)
        self.module: DGDModule | None = None
        self._state: TrainingState | None = None
        self.train_config: TrainConfig | None = None
        self.seed: int | None = None
        self._table_library: dict[str, torch.Tensor] | None = None
        #: the amortised start of new cells (:mod:`multidgd.encoder`), fitted after training
        self.encoder: StartEncoder | None = None
        self.encoder_record: dict | None = None
        #: how a new cell's present modalities are denoised (:meth:`fit_denoising`): modality ->
        #: weight of its own profile, the scores of every weight tried, the cells; None: not fitted
        self.denoise_record: dict | None = None
        #: modality -> candidates' profiles kept for later embeddings (:meth:`_candidate_profiles`)
        self._profile_cache: dict = {}

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 1000,
        *,
        seed: int | None = None,
        device: str | torch.device = "auto",
        config: TrainConfig | None = None,
        checkpoint_path: str | Path | None = None,
        resume: bool = False,
        progress_bar: bool = True,
    ) -> DGD:
        """Fit the model (maximum a posteriori) with early stopping on validation loss.

        Parameters
        ----------
        max_epochs
            Upper bound on epochs.
        seed
            Seeds the split, every initial value and the minibatch order (None: 0, or the
            checkpoint's when resuming).
        device
            ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        config
            :class:`TrainConfig` (defaults follow the paper).
        checkpoint_path
            File to write a checkpoint to every ``config.checkpoint_every`` epochs.
        resume
            Continue from ``checkpoint_path`` if it exists. Its seed and config are kept:
            ``seed`` or ``config`` that differ from them raise
            :class:`~multidgd.checkpoint.SettingMismatch`, as does ``max_epochs`` below its
            epoch (above it, training goes on to ``max_epochs``).
        progress_bar
            Show a progress bar (quiet when not a terminal).

        Returns
        -------
        ``self``; the losses per epoch are in :attr:`history`.

        Notes
        -----
        Launched with ``torchrun --nproc-per-node N`` (or inside an initialised
        ``torch.distributed`` process group), training is data-parallel: each process
        holds and updates the representations of its share of the cells, decoder and
        mixture gradients are summed over processes every step (``gloo`` on CPU, ``nccl``
        on GPUs), and every process ends with the whole model. Only rank 0 writes the
        checkpoint. See :mod:`multidgd.distributed`.
        """
        config = self._check_train_args(max_epochs, config, checkpoint_path, resume)
        self._profile_cache = {}  # candidates' profiles of the network before
        dev = distributed.init_from_env(resolve_device(device))
        if checkpoint_path is not None and distributed.is_main() and checkpoint.remove_stale_temporary(checkpoint_path):
            logger.info("removed a temporary file a killed checkpoint write left beside %s", checkpoint_path)
        if resume and Path(checkpoint_path).is_file():
            fp, mc = self.description.fingerprint, self.config.to_dict()
            payload = checkpoint.read_training(checkpoint_path, fingerprint=fp, model_config=mc)
            checkpoint.check_resume(payload, seed=seed, config=config, max_epochs=max_epochs)
            seed = int(payload["seed"])
            config = TrainConfig.from_dict(payload["train_config"])
            state = checkpoint.state_from_training(payload, self.description.build_module(self.config))
            logger.info("resuming from %s at epoch %d", checkpoint_path, state.epoch)
            if state.stopped_early and max_epochs > state.epoch:
                logger.info("that run stopped early at epoch %d; nothing is left to train", state.epoch)
        else:
            if resume:
                logger.warning("no checkpoint at %s; starting from scratch", checkpoint_path)
            seed, config = settings.seed if seed is None else seed, config or TrainConfig()
            state = initial_state(self.data, self.config, config, self.n_components, seed)
        self.train_config, self.seed = config, seed
        self._state = state
        self.module = state.module
        fit(
            state,
            self.data,
            config=config,
            max_epochs=max_epochs,
            device=dev,
            seed=seed,
            checkpoint_path=checkpoint_path,
            checkpoint_extra=lambda: {"model": self.description.to_payload(self.config)},
            progress_bar=progress_bar,
        )
        library = self.data.library_size
        if self.data.present is not None:  # a mosaic: no library size for a modality a cell lacks
            library = np.where(self.data.present, library, np.float32(np.nan))
        self._table_library = {
            "train": torch.from_numpy(library[state.train_index]),
            "val": torch.from_numpy(library[state.val_index]),
        }
        self.fit_encoder()
        self.fit_denoising()
        return self

    def fit_denoising(self, data: Any = None, *, max_cells: int = 1000, device: str = "auto") -> DGD:
        """Fit how a new cell's present modalities are denoised (:mod:`multidgd.prediction`).

        Up to ``max_cells`` validation cells with both modalities (a seeded sample) are
        placed as new cells; per modality, the weight α of the own decoded profile (against
        the posterior mean of the candidates' profiles) that best reconstructs their counts
        is kept (:func:`~multidgd.prediction.fit_denoise_weight`). :meth:`train` calls it.

        Parameters
        ----------
        data
            None: the training data this model holds; else the data it was trained on (its
            validation cells are found by ``obs_names``).
        max_cells
            Validation cells used at most.
        device
            As in :meth:`infer`.

        Returns
        -------
        ``self``, with :attr:`denoise_record` set (None when there are fewer than 10 such cells).
        """
        query = self._validation_query(data, max_cells)
        self.denoise_record = None
        if query is None:
            return self
        start, n_steps = resolve_start("auto", None, self.encoder is not None)
        initial = self.encoder.start(self.module, query) if start == "encoder" else None
        steps = {"n_steps": n_steps, "lr": 1e-2, "batch_size": 512, "memory_budget_mb": 512, "score_paired": True}
        emb = self._place(query, "naive", "search", initial, steps, device, False, None)
        weights = emb.prediction_weights
        record: dict[str, Any] = {"cells": query.n_cells, "own_weight": {}, "scores": {}}
        for j, m in enumerate(MODALITIES):
            getter = self.get_normalized_expression if m == "rna" else self.get_normalized_accessibility
            own = getter(emb, return_type="array", prediction="point")
            posterior = weights @ self._profiles_of(emb, j)(None)
            a, scores = fit_denoise_weight(query.counts[m], own, posterior, m)
            record["own_weight"][m], record["scores"][m] = a, {str(k): round(v, 6) for k, v in scores.items()}
        self.denoise_record = record
        logger.info(
            "denoising of new cells fitted on %d validation cells: own-profile weight %s",
            query.n_cells,
            record["own_weight"],
        )
        return self

    @property
    def denoise_weights(self) -> dict[str, float]:
        """Modality -> weight of a new cell's own decoded profile in the profile of a modality
        it has (:meth:`fit_denoising`; 1.0, the own profile alone, when not fitted).
        """
        fitted = (self.denoise_record or {}).get("own_weight", {})
        return {m: float(fitted.get(m, 1.0)) for m in MODALITIES}

    def _held_data(self) -> MultiomeData:
        """The training data this model holds; a model loaded from a file holds none (an error)."""
        if self.data is None:
            raise RuntimeError("this model was loaded without data: pass the data it was trained on")
        return self.data

    def _validation_query(self, data: Any, max_cells: int):
        """The validation cells with both modalities as new cells (at most ``max_cells``, a
        seeded sample), or None when fewer than 10 (or the held data stay on disk).
        """
        is_val = (self.split == "validation").to_numpy()
        if data is None:
            query = training_query(self._held_data(), np.sort(self.state.val_index))
        else:
            query = self._read_query(data, None, None, None, {}, 1.0, labels_needed=False)
            pos = self.obs_names.get_indexer(query.obs_names)
            query = query.take(np.flatnonzero((pos >= 0) & is_val[np.maximum(pos, 0)]))
        if query is None:
            return None
        rows = np.flatnonzero(query.present.all(axis=1))
        if len(rows) < 10:
            return None
        rng = np.random.default_rng(0 if self.seed is None else self.seed)
        return query.take(np.sort(rng.choice(rows, min(max_cells, len(rows)), replace=False)))

    def fit_encoder(
        self,
        data: Any = None,
        *,
        config: EncoderConfig | None = None,
        rna_mod: str | None = None,
        atac_mod: str | None = None,
        layer: str | None = None,
    ) -> DGD:
        """Fit the start encoder of new cells (:mod:`multidgd.encoder`) to the training and
        validation cells' representations. :meth:`train` calls it; call it for a model saved
        without one, or with another :class:`~multidgd.encoder.EncoderConfig`.

        Parameters
        ----------
        data
            None: the training data this model holds. A model loaded from a file needs the
            data it was trained on (MuData or AnnData with every model feature); its cells
            are matched by ``obs_names``, and those with both modalities are used.
        config
            The encoder's settings (defaults when None).
        rna_mod, atac_mod, layer
            As in :meth:`infer`.

        Returns
        -------
        ``self``, with :attr:`encoder` and :attr:`encoder_record` set.
        """
        state = self.state
        reps = [self._gather_table(k) for k in ("basal", "covariate")]  # per input cell, NaN: not trained
        if data is None:
            held = self._held_data()
            rows = np.sort(np.concatenate([state.train_index, state.val_index]))  # data order, as a data argument
            counts, library = held.counts, held.library_size  # a mosaic: 0 where absent (not used)
            basal, covariate = (r[self.description.kept] for r in reps)  # data rows
        else:
            query = self._read_query(data, rna_mod, atac_mod, layer, {}, 1.0, labels_needed=False)
            pos = self.obs_names.get_indexer(query.obs_names)
            basal, covariate = (np.where((pos >= 0)[:, None], r[np.maximum(pos, 0)], np.float32(np.nan)) for r in reps)
            rows = np.flatnonzero(query.present.all(axis=1) & ~np.isnan(basal).any(axis=1))
            counts, library = query.counts, query.library_size
        rows = rows[(library[rows] > 0).all(axis=1)]
        stats = reference_statistics(self.module, counts, library, rows)
        self.encoder, self.encoder_record = fit_encoder(stats, basal[rows], covariate[rows], config)
        self.encoder_record["reference_cells"] = len(rows)
        return self

    def _check_train_args(self, max_epochs, config, checkpoint_path, resume) -> TrainConfig | None:
        if self.data is None:
            raise RuntimeError("this model was loaded from a file without data; it cannot be trained further")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        if config is not None and not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if resume and checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        if any(self.learned_classes.values()):
            raise RuntimeError(
                f"covariate classes {self.learned_classes} were learned after training; training again "
                "would drop them. Train a new DGD on data that includes those cells instead."
            )
        return config

    # ------------------------------------------------------------------ what the model knows of its data
    @property
    def obs_names(self) -> pd.Index:
        """Input cell names; every per-cell getter is aligned to them."""
        return self.description.obs_names

    @property
    def var_names(self) -> dict[str, pd.Index]:
        """``rna``/``atac`` -> feature names, in decoder order."""
        return self.description.var_names

    @property
    def covariate_keys(self) -> list[str]:
        """The covariate obs columns."""
        return self.description.covariate_keys

    @property
    def covariate_categories(self) -> list[list[str]]:
        """The classes of each covariate (learned classes appended)."""
        return self.description.covariate_categories

    @property
    def learned_classes(self) -> dict[str, list[str]]:
        """Covariate key -> classes added after training by ``infer(new_classes="learn")``."""
        return self.description.learned_classes

    @property
    def cell_type_key(self) -> str | None:
        """The cell-type obs column (None without one)."""
        return self.description.cell_type_key

    @property
    def cell_type_categories(self) -> list[str] | None:
        """The cell types (None without a cell-type column)."""
        return self.description.cell_type_categories

    @property
    def source_modality(self) -> dict[str, str]:
        """``rna``/``atac`` -> the modality's name in the training data."""
        return self.description.source_modality

    @property
    def n_components(self) -> int:
        """Basal mixture components K."""
        return self.description.n_components

    # ------------------------------------------------------------------ results
    @property
    def is_trained(self) -> bool:
        """Whether the model holds trained parameters (trained here or loaded)."""
        return self.module is not None and self._state is not None and self._state.epoch > 0

    @property
    def state(self) -> TrainingState:
        """The :class:`~multidgd.checkpoint.TrainingState`: network, representation tables
        (``train_basal``, ``train_covariate``, ``val_basal``, ``val_covariate``), the data rows
        of the training and validation cells, epochs and history. For engines that drive
        :func:`multidgd.train.fit` directly; most users want the getters.
        """
        if not self.is_trained:
            raise RuntimeError("the model is not trained yet; call model.train() first")
        return self._state

    @property
    def history(self) -> pd.DataFrame:
        """Loss terms per epoch (per-cell means), training and validation, and seconds."""
        return pd.DataFrame(self.state.history).set_index("epoch")

    @property
    def best_epoch(self) -> int:
        """Epoch whose state was restored (the last one without validation)."""
        state = self.state
        restored = len(state.val_index) and (self.train_config is None or self.train_config.early_stopping)
        return state.best_epoch if restored else state.epoch

    @property
    def split(self) -> pd.Series:
        """The role of every input cell in training, indexed by ``obs_names``: ``"train"``,
        ``"validation"`` or ``"none"`` (cells left out: empty, or marked test).
        """
        where, _ = self.state.cell_rows(self.description.kept)
        values = np.array(["none", "train", "validation"], dtype=object)[where + 1]
        return pd.Series(pd.Categorical(values, categories=["train", "validation", "none"]), index=self.obs_names)

    def _gather_table(self, kind: str) -> np.ndarray:
        tables = self.state.tables
        train, val = (tables[f"{p}_{kind}"].values.detach().cpu().numpy() for p in ("train", "val"))
        return self.state.per_cell(self.description.kept, train, val)

    def get_latent_representation(self, data: Any = None, *, indices=None, **infer_kwargs) -> np.ndarray:
        """Basal representations, (n, L) float32.

        Parameters
        ----------
        data
            None: the training data's cells, aligned to ``obs_names`` (rows of cells left out
            of training, empty or test cells, are NaN). Else a MuData or AnnData: rows aligned
            to its ``obs_names``; the model's own cells keep their learned representations,
            the others are placed with :meth:`infer` (``infer_kwargs``).
        indices
            Integer positions (or names, or a mask) of the cells to return (default all).
        """
        if data is None:
            z = self._gather_table("basal")
            return z if indices is None else z[positions(self.obs_names, indices, "cells")]
        from .analysis.cells import CellSource, cell_representations

        rna_mod, atac_mod, layer = (infer_kwargs.pop(k, None) for k in ("rna_mod", "atac_mod", "layer"))
        query = self._read_query(data, rna_mod, atac_mod, layer, {}, 0.0, labels_needed=False)
        rows = positions(query.obs_names, indices, "cells")
        source = CellSource(None, None, None, rna_mod, atac_mod, layer, infer_kwargs)
        return cell_representations(self, data, query, rows, source).latent

    def get_covariate_representation(self, key: str | None = None) -> np.ndarray:
        """Representation of covariate ``key`` (default: the only one), (n_cells, covariate_dim)."""
        v = covariate_index(self.covariate_keys, key)
        d = self.config.covariate_dim
        return self._gather_table("covariate")[:, v * d : (v + 1) * d]

    def get_covariate_matrix(self) -> np.ndarray:
        """Every covariate's representation side by side (``covariate_keys`` order), the
        decoder's covariate input: (n_cells, covariate_dim * V) float32, NaN rows as above.
        """
        return self._gather_table("covariate")

    def get_library_size(self) -> np.ndarray:
        """Library sizes the model was trained with, (n_cells, 2) float32 (columns
        ``rna``, ``atac``), NaN rows for cells left out of training.
        """
        if self._table_library is None:
            raise ValueError("this model file holds no library sizes")
        return self.state.per_cell(
            self.description.kept, self._table_library["train"].numpy(), self._table_library["val"].numpy()
        )

    @torch.no_grad()
    def cluster(
        self,
        data: Any = None,
        *,
        temperature: float | None = None,
        rna_mod: str | None = None,
        atac_mod: str | None = None,
        layer: str | None = None,
        device: str | torch.device = "auto",
    ) -> Clustering:
        """The trained cells' mixture clusters and how sure each assignment is.

        Labels are the argmax of the basal mixture's responsibilities p(k | z) at each
        cell's representation. Without ``data`` the probabilities are those
        responsibilities; the components are narrow, so they are 0 or 1 for almost every
        cell. With the training ``data`` they are p(k | counts): each cell's counts scored
        at every (component mean, own covariate class mean) candidate, as new cells are
        (:meth:`infer`'s search, no steps), the likelihood tempered by ``temperature`` and
        weighted by the mixture weights (:func:`multidgd.prediction.component_posterior`).
        A cell whose counts fit two components alike gets about 1/2 for each.

        Parameters
        ----------
        data
            None, or the MuData the model was trained on (its trained cells are scored;
            others keep NaN rows and label -1).
        temperature
            With ``data``: None fits it, the temperature under which the counts best
            predict the labels (:func:`multidgd.prediction.fit_cluster_temperature`);
            or a number > 0.
        rna_mod, atac_mod, layer, device
            As for :meth:`infer`.

        Returns
        -------
        Clustering
            Labels, probabilities (n_cells, K) and the temperature used (None without data).
        """
        check_temperature(temperature)
        z = self.get_latent_representation()
        ok = ~np.isnan(z).any(axis=1)
        probs = np.full((len(z), self.n_components), np.nan, dtype=np.float32)
        labels = np.full(len(z), -1, dtype=np.int64)
        basal = self.module.basal.to("cpu")
        logp = basal.log_responsibilities(torch.from_numpy(z[ok])).numpy()
        labels[ok] = logp.argmax(axis=1)
        if data is None:
            probs[ok] = np.exp(logp)
            return Clustering(labels=labels, probabilities=probs)
        trained = self.obs_names[ok]
        missing = trained.difference(pd.Index(data.obs_names.astype(str)))
        if len(missing):
            raise ValueError(f"data lacks {len(missing)} of the model's trained cells, e.g. {missing[:3].tolist()}")
        emb = self.infer(
            data[trained],
            rna_mod=rna_mod,
            atac_mod=atac_mod,
            layer=layer,
            covariate_start="label",
            start="search",
            n_steps=0,
            device=device,
            progress_bar=False,
        )
        pos = self.obs_names.get_indexer(emb.obs_names)
        cand = emb.candidates
        if temperature is None:
            temperature = fit_cluster_temperature(cand.nll, cand.log_prior, labels[pos], self.n_components)
        probs[pos] = component_posterior(cand.nll, cand.log_prior, self.n_components, temperature)
        return Clustering(labels=labels, probabilities=probs, temperature=float(temperature))

    def decode(self, modality: str = "rna", *, cells: np.ndarray | None = None) -> np.ndarray:
        """Decoded fractions of one modality for trained cells.

        Parameters
        ----------
        modality
            ``"rna"`` or ``"atac"``.
        cells
            Integer positions into ``obs_names`` (default all trained cells).

        Returns
        -------
        (n, F_m) float32 fractions (each row sums to 1); NaN rows for untrained cells.
        """
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
        z, c = self.get_latent_representation(), self.get_covariate_matrix()
        cells = np.arange(len(z)) if cells is None else np.asarray(cells)
        z, c = z[cells], c[cells]
        ok = ~np.isnan(z).any(axis=1)
        out = np.full((len(cells), len(self.var_names[modality])), np.nan, dtype=np.float32)
        parts = decoded_fractions(self.module, z[ok], c[ok], modality)
        if parts:
            out[ok] = np.concatenate(parts)
        return out

    @torch.no_grad()
    def reconstruction_nll(self) -> pd.DataFrame:
        """Per-cell NB negative log-likelihood of each modality for trained cells.

        Returns a DataFrame indexed by ``obs_names`` with columns ``nll_rna``, ``nll_atac``
        and ``split`` (train / validation / none).
        """
        self.state  # noqa: B018 - raises when untrained
        if self.data is None:
            raise RuntimeError("needs the training data; this model was loaded without it")
        where, _ = self.state.cell_rows(self.description.kept)
        todo = np.flatnonzero(where >= 0)
        data_row = np.full(len(where), -1)
        data_row[np.flatnonzero(self.description.kept)] = np.arange(int(self.description.kept.sum()))
        z, c = self.get_latent_representation()[todo], self.get_covariate_matrix()[todo]
        out = np.full((len(where), len(MODALITIES)), np.nan)
        out[todo] = per_cell_nll(self.module, self.data, data_row[todo], z, c)
        split = np.array(["none", "train", "validation"])[where + 1]
        return pd.DataFrame({"nll_rna": out[:, 0], "nll_atac": out[:, 1], "split": split}, index=self.obs_names)

    # ------------------------------------------------------------------ new cells
    def infer(
        self,
        data: Any,
        *,
        rna_mod: str | None = None,
        atac_mod: str | None = None,
        layer: str | None = None,
        new_classes: str = "naive",
        covariate_start: str = "search",
        start: str = "auto",
        n_steps: int | None = None,
        lr: float = 1e-2,
        rna_library_key: str | None = None,
        atac_library_key: str | None = None,
        min_feature_fraction: float = 0.5,
        batch_size: int = 512,
        memory_budget_mb: float = 512,
        temperature: float | None = None,
        device: str | torch.device = "auto",
        progress_bar: bool = True,
    ) -> Embedding:
        """Place new cells into the trained model; the model is left unchanged (see ``new_classes``).

        Parameters
        ----------
        data
            MuData or AnnData of raw counts (not modified): both modalities, one, or a MuData
            whose modalities hold different cells. A cell lacking a modality is placed by
            the other, which the ``get_normalized_*`` getters then predict. Features are
            matched by ``var_names`` (absent ones are left out of the loss). Covariate labels
            are read from obs columns of the covariate keys; labels the model never saw are
            new classes. A column may be absent when neither ``new_classes="learn"`` nor
            ``covariate_start="label"`` needs it.
        rna_mod, atac_mod
            Modality names in a MuData (default: the names used in training).
        layer
            Layer with raw counts (default ``X``).
        new_classes
            ``"naive"``: covariate representations are inferred without labels, under the
            mixture of known classes (a new batch lands near the best-fitting known one).
            ``"learn"``: each unknown covariate label becomes a new component, learned from
            its cells' labels with every other parameter frozen, and kept in the model (and
            in files :meth:`save` writes); all labelled cells are then scored under their
            own class's component. When every label is known, nothing is learned.
        covariate_start
            ``"search"``: start from the best of every (basal component, covariate class)
            pair; ``"label"``: cells of a class the model knows start at that class's mean
            (only the basal component is searched).
        start
            Where the representations start: ``"encoder"``, the start encoder's output
            (:mod:`multidgd.encoder`); ``"search"``, the best candidate pair (see
            ``covariate_start``); ``"auto"`` (default): the encoder when the model has one.
            Cells lacking a modality are scored against every candidate either way (the
            posterior over them predicts what the cell lacks); after the encoder, cells with
            both modalities are scored when the model denoises what new cells have
            (:attr:`denoise_weights` below 1), else their ``prediction_certainty`` is NaN.
        n_steps, lr
            Adam steps (and learning rate) of the representations after the start; None:
            ``DEFAULT_STEPS[start]`` (3 after the encoder, 50 after the search).
        rna_library_key, atac_library_key
            obs columns with each modality's library size, used to scale predicted counts
            of a modality a cell lacks; without them it is estimated from training cells.
        min_feature_fraction
            Refuse a modality when fewer than this fraction of its model features match.
        batch_size
            Cells processed together.
        memory_budget_mb
            Working memory of one block of cells (MB): bounds the best-start search's
            largest temporary and the cells per block of the steps (about 16 bytes per cell
            and feature). The default keeps the blocks' buffers near 0.5 GB.
        temperature
            Of the posterior weights over the best-start candidates that predict a modality a
            cell lacks (:mod:`multidgd.prediction`); None: the default for what it has.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        progress_bar
            Show a progress bar.

        Returns
        -------
        :class:`~multidgd.results.Embedding` with representations, clusters, per-cell NLL,
        library sizes and prediction weights. ``Embedding.add_to(data)`` writes them into ``data``.
        """
        self.state  # noqa: B018 - raises when untrained
        start, n_steps = resolve_start(start, n_steps, self.encoder is not None)
        check_infer_args(new_classes, covariate_start, n_steps, lr, batch_size, memory_budget_mb, temperature)
        library_keys = {m: k for m, k in (("rna", rna_library_key), ("atac", atac_library_key)) if k}
        labels_needed = new_classes == "learn" or covariate_start == "label"
        query = self._read_query(data, rna_mod, atac_mod, layer, library_keys, min_feature_fraction, labels_needed)
        initial = self.encoder.start(self.module, query) if start == "encoder" else None
        steps = {"n_steps": int(n_steps), "lr": lr, "batch_size": int(batch_size), "memory_budget_mb": memory_budget_mb}
        steps["score_paired"] = min(self.denoise_weights.values()) < 1  # the posterior denoises them
        return self._place(query, new_classes, covariate_start, initial, steps, device, progress_bar, temperature)

    def _place(self, query, new_classes, covariate_start, initial, steps, device, progress_bar, temperature):
        """:meth:`infer` once the cells are read: place them, keep learned classes, build the Embedding."""
        train_config = self.train_config or TrainConfig()
        placed, grown, unseen = place_cells(
            self.module,
            query,
            covariate_keys=self.covariate_keys,
            covariate_categories=self.covariate_categories,
            learn_classes=new_classes == "learn",
            covariate_start=covariate_start,
            betas=train_config.betas,
            mixture_lr=train_config.lr_covariate_mixture,
            device=resolve_device(device),
            progress_bar=progress_bar,
            initial=initial,
            **steps,
        )
        learned = {} if grown is None else self._adopt_classes(grown, unseen)
        estimate = lambda lib: self._estimate_library(placed.latent, lib)  # noqa: E731
        return embedding_of(
            query, placed, self.module, self.var_names, self.covariate_keys, learned, estimate, temperature
        )

    def training_embedding(
        self,
        data: Any,
        *,
        rna_mod: str | None = None,
        atac_mod: str | None = None,
        layer: str | None = None,
        temperature: float | None = None,
        batch_size: int = 512,
        memory_budget_mb: float = 512,
        device: str | torch.device = "auto",
        progress_bar: bool = True,
    ) -> Embedding:
        """The model's own training and validation cells of ``data`` as an :class:`Embedding`.

        Each cell keeps its trained representation; nothing is optimised and the model is
        unchanged. A cell that lacks a modality (a mosaic's RNA-only and ATAC-only cells) is
        scored against the best-start candidates on what it has, as :meth:`infer` scores new
        cells, so that the ``get_normalized_*`` getters given this embedding predict the
        modality it lacks from the posterior over the candidates (``prediction="posterior"``;
        ``"point"`` decodes its own representation) and ``Embedding.prediction_certainty``
        says how sure each prediction is (NaN for cells with both modalities, which have
        nothing to predict).

        Parameters
        ----------
        data
            MuData or AnnData holding only cells the model trained on (e.g. the mosaic it was
            trained on, or the part of it with one modality), raw counts as in training.
        rna_mod, atac_mod, layer, temperature, batch_size, memory_budget_mb, device, progress_bar
            As in :meth:`infer`.

        Returns
        -------
        :class:`~multidgd.results.Embedding` of the cells of ``data``, in its order.
        """
        self.state  # noqa: B018 - raises when untrained
        check_infer_args("naive", "search", 0, 1.0, batch_size, memory_budget_mb, temperature)
        query = self._read_query(data, rna_mod, atac_mod, layer, {}, 0.5, labels_needed=False)
        pos = self.obs_names.get_indexer(query.obs_names)
        trained = pos >= 0
        trained[trained] = (self.split != "none").to_numpy()[pos[trained]]
        if not trained.all():
            raise ValueError(
                f"{int((~trained).sum())} cells of the data are not training or validation cells of the model, "
                f"e.g. {query.obs_names[~trained][:3].tolist()}; place new cells with infer()"
            )
        initial = (self.get_latent_representation()[pos], self.get_covariate_matrix()[pos])
        steps = {"n_steps": 0, "lr": 1.0, "batch_size": int(batch_size), "memory_budget_mb": memory_budget_mb}
        steps["score_paired"] = False  # a trained cell's own representation is its profile
        return self._place(query, "naive", "search", initial, steps, device, progress_bar, temperature)

    def _read_query(self, data, rna_mod, atac_mod, layer, library_keys, min_feature_fraction, labels_needed=True):
        """New cells of ``data`` checked against the model's features and covariates (:func:`read_query`)."""
        return read_query(
            data,
            var_names=self.var_names,
            modality_names=self.modality_names(rna_mod, atac_mod),
            covariate_keys=self.covariate_keys,
            layer=layer,
            library_size_keys=library_keys,
            min_feature_fraction=min_feature_fraction,
            labels_needed=labels_needed,
        )

    def _adopt_classes(self, module: DGDModule, unseen: dict[str, list[str]]) -> dict[str, list[str]]:
        """Keep the grown network and its new classes; returns the classes learned."""
        self.module = module
        self._state.module = module
        learned = {}
        for v, key in enumerate(self.covariate_keys):
            if unseen.get(key):
                self.covariate_categories[v] = [*self.covariate_categories[v], *unseen[key]]
                self.learned_classes[key] = [*self.learned_classes.get(key, []), *unseen[key]]
                learned[key] = unseen[key]
        logger.info("learned new covariate classes %s; save() keeps them", learned)
        return learned

    def _estimate_library(self, latent: np.ndarray, library: np.ndarray) -> np.ndarray | None:
        if self._table_library is None:
            return None
        tables = self._state.tables
        reference = torch.cat([tables["train_basal"].values.cpu(), tables["val_basal"].values.cpu()])
        reference_library = torch.cat([self._table_library["train"], self._table_library["val"]]).double()
        return estimate_library(latent, library, reference, reference_library)

    def modality_names(self, rna_mod: str | None = None, atac_mod: str | None = None) -> dict[str, str]:
        """Names of the RNA and ATAC modalities in new data: those given, else the ones used
        in training (``"rna"`` / ``"atac"`` when unknown).
        """
        return {
            "rna": rna_mod or self.source_modality.get("rna", "rna"),
            "atac": atac_mod or self.source_modality.get("atac", "atac"),
        }

    # ------------------------------------------------------------------ decoded profiles
    def get_normalized_expression(
        self,
        embedding: Embedding | None = None,
        *,
        genes=None,
        cells=None,
        scale: str = "fraction",
        transform_batch=None,
        library_size: float | None = None,
        return_type: str | None = None,
        threshold: float | str = 0.0,
        batch_size: int = 1024,
        max_dense_elements: int = 50_000_000,
        prediction: str = "posterior",
    ):
        """Decoded RNA for trained cells or for new cells (an :class:`Embedding`).

        Parameters
        ----------
        embedding
            Result of :meth:`infer`; ``None`` for the training (and validation) cells.
        genes
            Gene names, positions or a boolean mask to return (default all).
        cells
            Cell names, integer positions or a boolean mask within the cells (default all).
        scale
            ``"fraction"`` (each cell's profile over all genes sums to 1) or ``"counts"``
            (fraction times the cell's library size; see :class:`Embedding` for how the
            library size of a missing modality is chosen).
        transform_batch
            Decode every cell as if measured in this covariate class (its mixture mean as the
            covariate input): a class name, or ``{key: class}`` with several covariates. The
            batch-corrected profile; a missing modality predicted from candidates is not changed.
        library_size
            Fractions times this number (e.g. 1e4, counts per 10,000 for every cell).
        return_type
            ``"dataframe"``, ``"array"`` or ``"sparse"`` (CSR keeping values >= ``threshold``).
            By default a DataFrame, unless it would exceed ``max_dense_elements`` values, in
            which case an error asks for a subset or a sparse result.
        threshold
            Cut-off of the sparse result: a number (on the scale returned), or ``"uniform"``
            to keep the features whose share of the cell's profile is at least that of a flat
            profile (1 / number of features of the modality), whatever the library size.
        batch_size
            Cells decoded together.
        max_dense_elements
            Largest default (DataFrame) result, in values.
        prediction
            For new cells that lack the modality: ``"posterior"`` (default), the mean of the
            best-start candidates' profiles weighted by their posterior given what the cell
            has (:mod:`multidgd.prediction`; how sure it is:
            ``Embedding.prediction_certainty``); ``"point"``, the profile decoded from the
            cell's own optimised representation. Cells that have the modality are always
            decoded from their own representation.
        """
        request = ProfileRequest(genes, cells, return_type, threshold, batch_size, max_dense_elements)
        return self._normalized("rna", embedding, request, scale, prediction, transform_batch, library_size)

    def get_normalized_accessibility(
        self,
        embedding: Embedding | None = None,
        *,
        peaks=None,
        cells=None,
        scale: str = "fraction",
        transform_batch=None,
        library_size: float | None = None,
        return_type: str | None = None,
        threshold: float | str = 0.0,
        batch_size: int = 1024,
        max_dense_elements: int = 50_000_000,
        prediction: str = "posterior",
    ):
        """Decoded ATAC for trained or new cells; the same parameters as
        :meth:`get_normalized_expression`, with ``peaks`` instead of ``genes``.
        """
        request = ProfileRequest(peaks, cells, return_type, threshold, batch_size, max_dense_elements)
        return self._normalized("atac", embedding, request, scale, prediction, transform_batch, library_size)

    def _normalized(self, modality, embedding, request, scale, prediction, transform_batch, library_size):
        self.state  # noqa: B018 - raises when untrained
        if scale not in ("fraction", "counts"):
            raise ValueError(f"scale must be 'fraction' or 'counts', got {scale!r}")
        if library_size is not None and (scale == "counts" or not library_size > 0):
            raise ValueError(f"library_size must be > 0 and goes with scale='fraction', got {library_size!r}")
        check_prediction(prediction)
        j = MODALITIES.index(modality)
        names, latent, cov, library = self._decoder_inputs(embedding, j, scale)
        library = library if scale == "counts" else None
        if library_size is not None:
            library = np.full(len(latent), float(library_size), dtype=np.float32)
        if transform_batch is not None:
            cov = self._covariates_at(transform_batch, len(latent))
        mixture = None
        if embedding is not None and prediction == "posterior" and embedding.candidates is not None:
            lacking = ~embedding.observed[:, j]
            # what a cell has: its own profile blended with the posterior mean (not under transform_batch)
            own_weight = self.denoise_weights[modality]
            may_denoise = transform_batch is None and own_weight < 1
            weights = embedding.prediction_weights if lacking.any() or may_denoise else None
            denoised = ~lacking & ~np.isnan(weights).any(axis=1) if may_denoise else np.zeros_like(lacking)
            if lacking.any() or denoised.any():
                own = np.where(denoised, own_weight, 0.0)
                profiles = self._profiles_of(embedding, j)
                mixture = CandidateMixture(lacking | denoised, weights, profiles, own)
        features = self.var_names[modality]
        return normalized_profiles(self.module, modality, names, latent, cov, library, features, request, mixture)

    def _covariates_at(self, transform_batch, n: int) -> np.ndarray:
        """(n, d * V) covariate input with every cell at the mean of the class ``transform_batch`` names."""
        keys = self.covariate_keys
        if not keys:
            raise ValueError("transform_batch needs a model with covariates; this one has none")
        wanted = transform_batch if isinstance(transform_batch, dict) else {keys[0]: transform_batch}
        if not isinstance(transform_batch, dict) and len(keys) > 1:
            raise ValueError(f"the model has covariates {keys}: pass transform_batch as {{key: class}}")
        unknown = set(wanted) - set(keys)
        if unknown or set(keys) - set(wanted):
            raise ValueError(f"transform_batch must name a class of each covariate {keys}, got {transform_batch!r}")
        codes = []
        for v, key in enumerate(keys):
            classes = self.covariate_categories[v]
            if str(wanted[key]) not in classes:
                raise ValueError(f"transform_batch: {key} has no class {wanted[key]!r}; classes: {classes}")
            codes.append(classes.index(str(wanted[key])))
        return self.module.covariate_means(np.tile(codes, (n, 1))).numpy()

    def _profiles_of(self, embedding: Embedding, j: int):
        """``profiles(cols)`` of the embedding's candidates over the training cells (modality ``j``)."""
        c, m = embedding.candidates, MODALITIES[j]

        def profiles(cols: np.ndarray | None) -> np.ndarray:
            if m not in c.profiles:  # all features once per embedding; later calls take columns
                c.profiles[m] = self._candidate_profiles(c, j)
            return c.profiles[m] if cols is None else c.profiles[m][:, cols]

        return profiles

    def _candidate_profiles(self, c, j: int) -> np.ndarray:
        """(J, F) profiles of candidates ``c`` over the training cells (modality ``j``), kept on
        the model for later embeddings with the same network, epoch and candidates.
        """
        m, key = MODALITIES[j], (self.module, self.state.epoch)
        kept = self._profile_cache.get(m)
        if kept is not None and kept[0][0] is key[0] and kept[0][1] == key[1]:
            if np.array_equal(kept[1], c.latent) and np.array_equal(kept[2], c.covariate):
                kept[3].setflags(write=False)  # a copy of the model may hold a writeable copy
                return kept[3]
        train = (self.split == "train").to_numpy()
        library = None if self._table_library is None else self.get_library_size()[train, j]
        latent, cov = self.get_latent_representation()[train], self.get_covariate_matrix()[train]
        profiles = candidate_profiles(self.module, c, latent, cov, library, m)
        profiles.setflags(write=False)  # shared by the embeddings that use it
        self._profile_cache[m] = (key, c.latent.copy(), c.covariate.copy(), profiles)
        return profiles

    def _decoder_inputs(self, embedding: Embedding | None, j: int, scale: str):
        """(names, latent, covariate, library of modality ``j`` or None) of the trained cells
        (``embedding`` None) or of new cells.
        """
        if embedding is not None:
            if not isinstance(embedding, Embedding):
                raise TypeError(f"embedding must be an Embedding from infer(), got {type(embedding).__name__}")
            return embedding.obs_names, embedding.latent, embedding.covariate, embedding.library_size[:, j]
        have = (self.split != "none").to_numpy()
        library = None
        if scale == "counts":
            if self._table_library is None:
                raise ValueError("this model file holds no library sizes; use scale='fraction'")
            library = self.get_library_size()[have, j]
        return self.obs_names[have], self.get_latent_representation()[have], self.get_covariate_matrix()[have], library

    # ------------------------------------------------------------------ differential tests
    def differential_expression(self, data: Any = None, *, groupby, group1=None, group2=None, **kwargs) -> pd.DataFrame:
        """Genes that differ between groups of cells, from the decoded, batch-corrected profiles.

        Parameters
        ----------
        data
            None: the model's training and validation cells, with the counts it was trained
            on. Else a MuData or AnnData of raw counts (not modified): the model's own cells
            keep their representations, others are placed with :meth:`infer` (or taken from
            ``embedding=``).
        groupby
            ``obs`` column of the groups (with ``data=None``: the cell-type key or a covariate
            key), or the labels themselves (a Series by cell name, or one per cell).
        group1
            A group, or a list of groups each compared in turn; None: every group.
        group2
            The group compared against; None: all other cells ("rest").
        **kwargs
            ``features`` (names, positions or mask; default all), ``cells`` (of ``data``),
            ``embedding``, ``delta`` (smallest |log2 fold change| that counts, 0.25), ``fdr``
            (0.05), ``pseudocount`` (counts at the median library size, 0.1),
            ``batch_correction`` (True = "both"; "covariate", "within", False = "none"),
            ``n_cells`` (most cells decoded per group and batch, 1000),
            ``n_bootstrap`` (200), ``seed``, ``memory_budget_mb`` (512), ``rna_mod``,
            ``atac_mod``, ``layer``, ``infer_kwargs``, ``progress_bar``; see
            :func:`multidgd.analysis.differential_test`.

        Returns
        -------
        pandas.DataFrame
            Indexed by feature, one block of rows per comparison (most likely changes first),
            columns :data:`multidgd.analysis.DIFFERENTIAL_COLUMNS`: ``proba_de`` (probability
            that |LFC| >= delta), ``bayes_factor``, ``is_de_fdr``, ``lfc_*`` (log2 fold change of
            the groups' mean normalised profiles), ``scale1/2`` (those means), ``raw_mean1/2``,
            ``non_zeros_proportion1/2`` and ``raw_normalized_mean1/2`` (counts per 10,000) over
            each side's cells. :func:`multidgd.analysis.rank_genes_groups` turns a
            one-against-rest table into scanpy's form.
        """
        from .analysis.differential import differential_test

        return differential_test(self, data, groupby=groupby, group1=group1, group2=group2, modality="rna", **kwargs)

    def differential_accessibility(
        self, data: Any = None, *, groupby, group1=None, group2=None, **kwargs
    ) -> pd.DataFrame:
        """Peaks that differ between groups of cells; the arguments and table of
        :meth:`differential_expression`, over peaks.
        """
        from .analysis.differential import differential_test

        return differential_test(self, data, groupby=groupby, group1=group1, group2=group2, modality="atac", **kwargs)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the trained model to one file that :meth:`load` reads without any data.

        Parameters
        ----------
        path
            A file (e.g. ``model.pt``), or a directory (one that exists, or a path without a
            suffix), which gets ``model.pt``.
        overwrite
            Replace an existing file; without it an existing file is refused.

        Returns
        -------
        pathlib.Path
            The file written.
        """
        path = _model_file(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = checkpoint.model_payload(
            self.state,
            description=self.description.to_payload(self.config),
            train_config=self.train_config.to_dict(),
            seed=self.seed,
            library_size=self._table_library,
        )
        payload["encoder"] = encoder_payload(self.encoder, self.encoder_record)
        payload["denoise"] = self.denoise_record
        checkpoint.write_atomic(payload, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> DGD:
        """Read a model written by :meth:`save` (a file, or a directory holding ``model.pt``). Needs no data."""
        payload = checkpoint.read_model(_model_file(path))
        self = cls.__new__(cls)
        self.config = ModelConfig.from_dict(payload["model"]["model_config"])
        self.data = None
        self.description = ModelDescription.from_payload(payload["model"])
        module = self.description.build_module(self.config)
        self._state = checkpoint.state_from_model(payload, module)
        self.module = module
        self.train_config = TrainConfig.from_dict(payload["train_config"])
        self.seed = payload["seed"]
        self._table_library = payload.get("library_size")
        self.encoder, self.encoder_record = encoder_from_payload(payload.get("encoder"))
        self.denoise_record = payload.get("denoise")
        self._profile_cache = {}
        return self

    def __repr__(self) -> str:
        nf = {m: len(v) for m, v in self.var_names.items()}
        status = f"trained {self._state.epoch} epochs" if self.is_trained else "not trained"
        return (
            f"DGD({len(self.obs_names)} cells, {nf['rna']} genes, {nf['atac']} peaks, "
            f"K={self.n_components}, covariates={self.covariate_keys}; {status})"
        )
