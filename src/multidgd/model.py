"""DGD: the user-facing model, wiring data, network, training and checkpoints together."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch

from . import checkpoint
from .config import ModelConfig, TrainConfig
from .data import MODALITIES, MultiomeData, gather_rows, make_validation_split, read_multiome
from .initialization import kmeans_centres, spectral_embedding
from .network import DGDModule
from .representation import RepresentationTable
from .train import TrainingState, fit

__all__ = ["DGD", "Clustering", "resolve_device"]

logger = logging.getLogger(__name__)

_MODEL_KIND = "multidgd-model"
_CHECKPOINT_KIND = "multidgd-training-checkpoint"
_FORMAT_VERSION = 1


class Clustering(NamedTuple):
    """Mixture-component assignments of cells.

    Attributes
    ----------
    labels
        (n_cells,) int64 argmax component; -1 for cells without a representation.
    probabilities
        (n_cells, K) float32 responsibilities p(k | z); NaN rows for cells without one.
    """

    labels: np.ndarray
    probabilities: np.ndarray


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
        d = self.data
        if config.n_components is not None:
            n_components = config.n_components
        elif d.cell_type_categories is not None:
            n_components = len(d.cell_type_categories)
        else:
            n_components = 1
        self._apply_description(
            {
                "obs_names": list(d.input_obs_names),
                "kept": d.kept,
                "var_names": d.var_names,
                "covariate_keys": d.covariate_keys,
                "covariate_categories": d.covariate_categories,
                "cell_type_key": d.cell_type_key,
                "cell_type_categories": d.cell_type_categories,
                "source_modality": d.source_modality,
                "n_components": n_components,
                "fingerprint": _fingerprint(d),
            }
        )
        self.module: DGDModule | None = None
        self._state: TrainingState | None = None
        self.train_config: TrainConfig | None = None
        self.seed: int | None = None

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 1000,
        *,
        seed: int = 0,
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
            Seeds the split, every initial value and the minibatch order.
        device
            ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
        config
            :class:`TrainConfig` (defaults follow the paper).
        checkpoint_path
            File to write a checkpoint to every ``config.checkpoint_every`` epochs.
        resume
            Continue from ``checkpoint_path`` if it exists (seed and config are taken from it).
        progress_bar
            Show a progress bar (quiet when not a terminal).

        Returns
        -------
        ``self``; the losses per epoch are in :attr:`history`.
        """
        if self.data is None:
            raise RuntimeError("this model was loaded from a file without data; it cannot be trained further")
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
        config = config or TrainConfig()
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if resume and checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        dev = resolve_device(device)

        if resume and Path(checkpoint_path).is_file():
            payload = checkpoint.read(checkpoint_path, kind=_CHECKPOINT_KIND)
            self._check_checkpoint_matches(payload, checkpoint_path)
            seed = int(payload["seed"])
            config = TrainConfig.from_dict(payload["train_config"])
            state = self._state_from_checkpoint(payload)
            logger.info("resuming from %s at epoch %d", checkpoint_path, state.epoch)
        else:
            if resume:
                logger.warning("no checkpoint at %s; starting from scratch", checkpoint_path)
            state = self._initial_state(config, seed)
        self.train_config, self.seed = config, seed
        self._state = state
        self.module = state.module

        def extra() -> dict[str, Any]:
            return {"model": self._describe()}

        fit(
            state,
            self.data,
            config=config,
            max_epochs=max_epochs,
            device=dev,
            seed=seed,
            checkpoint_path=checkpoint_path,
            checkpoint_extra=extra,
            progress_bar=progress_bar,
        )
        return self

    def _initial_state(self, config: TrainConfig, seed: int) -> TrainingState:
        d = self.data
        n = d.n_cells
        if n < config.batch_size:
            raise ValueError(
                f"{n} cells is fewer than one minibatch (batch_size={config.batch_size}); "
                "pass TrainConfig(batch_size=...) no larger than the number of cells"
            )
        if d.split is not None:
            is_train = d.split == "train"
            is_val = d.split == "validation"
        else:
            is_val = make_validation_split(n, config.validation_fraction, strata=d.cell_type_codes, seed=seed)
            is_train = ~is_val
        train_index = np.flatnonzero(is_train)
        val_index = np.flatnonzero(is_val)
        if len(train_index) < config.batch_size:
            raise ValueError(
                f"{len(train_index)} training cells is fewer than one minibatch "
                f"(batch_size={config.batch_size}); lower batch_size or validation_fraction"
            )
        n_classes = [len(c) for c in d.covariate_categories]
        module = DGDModule(d.n_features, n_classes, self.n_components, self.config, seed=seed)
        gen = torch.Generator().manual_seed(seed + 1)
        L, dc = self.config.latent_dim, self.config.covariate_dim * len(n_classes)

        val_basal = torch.zeros(len(val_index), L)
        if config.basal_init == "pca":
            # one embedding of training and validation cells, so both start alike
            both = np.concatenate([train_index, val_index])
            emb = spectral_embedding(
                d.counts, both, L, radius=self.config.basal_radius, groups=d.covariate_codes, seed=seed
            )
            emb = torch.from_numpy(emb)
            basal, val_basal = emb[: len(train_index)], emb[len(train_index) :]
        elif config.basal_init == "normal":
            basal = config.basal_init_sd * torch.randn(len(train_index), L, generator=gen)
        else:
            basal = torch.zeros(len(train_index), L)
        if config.mixture_init == "kmeans":
            with torch.no_grad():
                module.basal.mean.copy_(torch.from_numpy(kmeans_centres(basal.numpy(), self.n_components, seed=seed)))

        # training covariate rows start at their class mean; validation rows at 0 (unsupervised)
        cov = torch.zeros(len(train_index), dc)
        with torch.no_grad():
            for v, mixture in enumerate(module.covariates):
                labels = torch.from_numpy(d.covariate_codes[train_index, v])
                cov[:, 2 * v : 2 * v + 2] = mixture.mean[labels]
        tables = {
            "train_basal": RepresentationTable(basal),
            "train_covariate": RepresentationTable(cov),
            "val_basal": RepresentationTable(val_basal),
            "val_covariate": RepresentationTable(torch.zeros(len(val_index), dc)),
        }
        return TrainingState(module=module, tables=tables, train_index=train_index, val_index=val_index)

    def _state_from_checkpoint(self, payload: dict[str, Any]) -> TrainingState:
        d = self.data
        module = DGDModule(d.n_features, [len(c) for c in d.covariate_categories], self.n_components, self.config)
        module.load_state_dict(payload["module"])
        tables = {}
        for name, tstate in payload["tables"].items():
            table = RepresentationTable(tstate["values"])
            table.load_state_dict(tstate)
            tables[name] = table
        return TrainingState(
            module=module,
            tables=tables,
            train_index=payload["train_index"].numpy(),
            val_index=payload["val_index"].numpy(),
            epoch=int(payload["epoch"]),
            history=list(payload["history"]),
            best_epoch=int(payload["best_epoch"]),
            best_metric=float(payload["best_metric"]),
            best_snapshot=payload["best_snapshot"],
            optimizer_states=payload["optimizers"],
            shuffle_rng_state=payload["shuffle_rng_state"],
            stopped_early=bool(payload["stopped_early"]),
        )

    def _check_checkpoint_matches(self, payload: dict[str, Any], path) -> None:
        described = payload.get("model", {})
        if described.get("fingerprint") != self._fingerprint:
            raise ValueError(
                f"checkpoint {path} was written for other data (cells, features or labels differ); "
                "remove it or point checkpoint_path elsewhere"
            )
        if described.get("model_config") != self.config.to_dict():
            raise ValueError(f"checkpoint {path} was written with another ModelConfig")

    # ------------------------------------------------------------------ results
    @property
    def is_trained(self) -> bool:
        return self.module is not None and self._state is not None and self._state.epoch > 0

    def _require_trained(self) -> TrainingState:
        if not self.is_trained:
            raise RuntimeError("the model is not trained yet; call model.train() first")
        return self._state

    @property
    def history(self) -> pd.DataFrame:
        """Loss terms per epoch (per-cell means), training and validation, and seconds."""
        state = self._require_trained()
        return pd.DataFrame(state.history).set_index("epoch")

    @property
    def best_epoch(self) -> int:
        """Epoch whose state was restored (the last one without validation)."""
        state = self._require_trained()
        restored = len(state.val_index) and (self.train_config is None or self.train_config.early_stopping)
        return state.best_epoch if restored else state.epoch

    def _cell_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For every input cell: which table holds it (0 train, 1 validation, -1 none) and its row."""
        state = self._require_trained()
        n_in = len(self.obs_names)
        kept_pos = np.flatnonzero(self._kept)  # data row -> input row
        where = np.full(n_in, -1, dtype=np.int64)
        row = np.full(n_in, -1, dtype=np.int64)
        where[kept_pos[state.train_index]] = 0
        row[kept_pos[state.train_index]] = np.arange(len(state.train_index))
        where[kept_pos[state.val_index]] = 1
        row[kept_pos[state.val_index]] = np.arange(len(state.val_index))
        return where, row, kept_pos

    def _gather_table(self, kind: str) -> np.ndarray:
        state = self._require_trained()
        where, row, _ = self._cell_rows()
        dim = state.tables[f"train_{kind}"].dim
        out = np.full((len(self.obs_names), dim), np.nan, dtype=np.float32)
        for code, prefix in ((0, "train"), (1, "val")):
            mask = where == code
            if mask.any():
                out[mask] = state.tables[f"{prefix}_{kind}"].values.detach().cpu().numpy()[row[mask]]
        return out

    def get_latent_representation(self) -> np.ndarray:
        """Basal representations, (n_cells, L) float32, aligned to the input ``obs_names``.

        Rows of cells left out of training (empty or test cells) are NaN.
        """
        return self._gather_table("basal")

    def get_covariate_representation(self, key: str | None = None) -> np.ndarray:
        """2-D representation of covariate ``key`` (default: the only one), (n_cells, 2)."""
        self._require_trained()
        if not self.covariate_keys:
            raise ValueError("the model has no covariates")
        if key is None:
            if len(self.covariate_keys) > 1:
                raise ValueError(f"several covariates; pass key= one of {self.covariate_keys}")
            key = self.covariate_keys[0]
        if key not in self.covariate_keys:
            raise ValueError(f"covariate {key!r} unknown; the model has {self.covariate_keys}")
        v = self.covariate_keys.index(key)
        d = self.config.covariate_dim
        return self._gather_table("covariate")[:, v * d : (v + 1) * d]

    @torch.no_grad()
    def cluster(self) -> Clustering:
        """Basal mixture responsibilities p(k | z) (computed in log space) and their argmax."""
        self._require_trained()
        z = self.get_latent_representation()
        ok = ~np.isnan(z).any(axis=1)
        probs = np.full((len(z), self.n_components), np.nan, dtype=np.float32)
        labels = np.full(len(z), -1, dtype=np.int64)
        basal = self.module.basal.to("cpu")
        logp = basal.log_responsibilities(torch.from_numpy(z[ok])).numpy()
        probs[ok] = np.exp(logp)
        labels[ok] = logp.argmax(axis=1)
        return Clustering(labels=labels, probabilities=probs)

    @torch.no_grad()
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
        self._require_trained()
        z = self.get_latent_representation()
        c = self._gather_table("covariate")
        cells = np.arange(len(z)) if cells is None else np.asarray(cells)
        z, c = z[cells], c[cells]
        ok = ~np.isnan(z).any(axis=1)
        out = np.full((len(cells), len(self.var_names[modality])), np.nan, dtype=np.float32)
        module = self.module.to("cpu").eval()
        for start in range(0, int(ok.sum()), 1024):
            sel = np.flatnonzero(ok)[start : start + 1024]
            logf = module.decode(torch.from_numpy(z[sel]), torch.from_numpy(c[sel]), [modality])[modality]
            out[sel] = torch.exp(logf).numpy()
        return out

    @torch.no_grad()
    def reconstruction_nll(self) -> pd.DataFrame:
        """Per-cell NB negative log-likelihood of each modality for trained cells.

        Returns a DataFrame indexed by ``obs_names`` with columns ``nll_rna``, ``nll_atac``
        and ``split`` (train / validation / none).
        """
        self._require_trained()
        if self.data is None:
            raise RuntimeError("needs the training data; this model was loaded without it")
        where, row, kept_pos = self._cell_rows()
        z, c = self.get_latent_representation(), self._gather_table("covariate")
        module = self.module.to("cpu").eval()
        out = np.full((len(z), len(MODALITIES)), np.nan)
        data_row = np.full(len(z), -1)
        data_row[kept_pos] = np.arange(len(kept_pos))
        todo = np.flatnonzero(where >= 0)
        lib = torch.from_numpy(self.data.library_size)
        for start in range(0, len(todo), 512):
            sel = todo[start : start + 512]
            rows = data_row[sel]
            counts = {m: gather_rows(x, rows) for m, x in self.data.counts.items()}
            logf = module.decode(torch.from_numpy(z[sel]), torch.from_numpy(c[sel]))
            nll = module.reconstruction_nll(logf, counts, lib[rows])
            for j, m in enumerate(MODALITIES):
                out[sel, j] = nll[m].numpy()
        split = np.array(["none", "train", "validation"])[where + 1]
        return pd.DataFrame({"nll_rna": out[:, 0], "nll_atac": out[:, 1], "split": split}, index=self.obs_names)

    # ------------------------------------------------------------------ files
    def _describe(self) -> dict[str, Any]:
        return {
            "format_version": _FORMAT_VERSION,
            "model_config": self.config.to_dict(),
            "n_components": self.n_components,
            "obs_names": [str(x) for x in self.obs_names],
            "kept": torch.from_numpy(np.asarray(self._kept, dtype=bool)),
            "var_names": {m: [str(x) for x in v] for m, v in self.var_names.items()},
            "covariate_keys": list(self.covariate_keys),
            "covariate_categories": self.covariate_categories,
            "cell_type_key": self.cell_type_key,
            "cell_type_categories": self.cell_type_categories,
            "source_modality": self.source_modality,
            "fingerprint": self._fingerprint,
        }

    def _apply_description(self, described: dict[str, Any]) -> None:
        """Set the data-independent attributes (names, labels, K) from a description."""
        self.obs_names = pd.Index([str(x) for x in described["obs_names"]])
        self.var_names = {m: pd.Index([str(x) for x in v]) for m, v in described["var_names"].items()}
        self.covariate_keys = list(described["covariate_keys"])
        self.covariate_categories = [list(c) for c in described["covariate_categories"]]
        self.cell_type_key = described["cell_type_key"]
        cats = described["cell_type_categories"]
        self.cell_type_categories = None if cats is None else list(cats)
        self.source_modality = dict(described["source_modality"])
        self.n_components = int(described["n_components"])
        kept = described["kept"]
        self._kept = kept.numpy() if isinstance(kept, torch.Tensor) else np.asarray(kept, dtype=bool)
        self._fingerprint = described["fingerprint"]

    def save(self, path: str | Path) -> None:
        """Write the trained model to one file that :meth:`load` reads without any data."""
        state = self._require_trained()
        payload = {
            "kind": _MODEL_KIND,
            "model": self._describe(),
            "module": {k: v.detach().cpu() for k, v in self.module.state_dict().items()},
            "tables": {k: t.values.detach().cpu() for k, t in state.tables.items()},
            "train_index": torch.from_numpy(state.train_index),
            "val_index": torch.from_numpy(state.val_index),
            "history": state.history,
            "best_epoch": state.best_epoch,
            "epoch": state.epoch,
            "train_config": self.train_config.to_dict(),
            "seed": self.seed,
        }
        checkpoint.write_atomic(payload, path)

    @classmethod
    def load(cls, path: str | Path) -> DGD:
        """Read a model written by :meth:`save`. Needs no data."""
        payload = checkpoint.read(path, kind=_MODEL_KIND)
        described = payload["model"]
        if described.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: unsupported format version {described.get('format_version')}")
        self = cls.__new__(cls)
        self.config = ModelConfig.from_dict(described["model_config"])
        self.data = None
        self._apply_description(described)
        n_features = {m: len(v) for m, v in self.var_names.items()}
        module = DGDModule(n_features, [len(c) for c in self.covariate_categories], self.n_components, self.config)
        module.load_state_dict(payload["module"])
        tables = {k: RepresentationTable(v) for k, v in payload["tables"].items()}
        self.module = module
        self._state = TrainingState(
            module=module,
            tables=tables,
            train_index=payload["train_index"].numpy(),
            val_index=payload["val_index"].numpy(),
            epoch=int(payload["epoch"]),
            history=list(payload["history"]),
            best_epoch=int(payload["best_epoch"]),
        )
        self.train_config = TrainConfig.from_dict(payload["train_config"])
        self.seed = payload["seed"]
        return self

    def __repr__(self) -> str:
        nf = {m: len(v) for m, v in self.var_names.items()}
        status = f"trained {self._state.epoch} epochs" if self.is_trained else "not trained"
        return (
            f"DGD({len(self.obs_names)} cells, {nf['rna']} genes, {nf['atac']} peaks, "
            f"K={self.n_components}, covariates={self.covariate_keys}; {status})"
        )


def _fingerprint(d: MultiomeData) -> str:
    h = hashlib.sha256()
    for part in (
        list(d.obs_names),
        *(list(v) for v in d.var_names.values()),
        d.covariate_keys,
        d.covariate_categories,
        d.cell_type_categories or [],
    ):
        h.update("\x1f".join(map(str, part)).encode())
        h.update(b"\x1e")
    for m in MODALITIES:
        h.update(np.ascontiguousarray(d.library_size[:, MODALITIES.index(m)]).tobytes())
    return h.hexdigest()
