"""The file schema: what training writes and the model reads back.

Two kinds of self-describing file, each written atomically with ``torch.save``:

* a **training checkpoint** (:data:`CHECKPOINT_KIND`): everything that changes during
  training (:class:`TrainingState`, the optimisers' moments, the shuffling generator), so
  that a run resumes exactly where it stopped;
* a **model file** (:data:`MODEL_KIND`): the trained parameters, representations and
  library sizes that :meth:`multidgd.DGD.load` needs, without any data.

Both carry the model's description (names, labels, configuration) under ``"model"``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .module import DGDModule
from .representation import RepresentationTable

if TYPE_CHECKING:
    from .config import ModelConfig
    from .data import MultiomeData

__all__ = [
    "CHECKPOINT_KIND",
    "FORMAT_VERSION",
    "MODEL_KIND",
    "MODEL_SECTIONS",
    "ModelDescription",
    "SettingMismatch",
    "TrainingState",
    "model_payload",
    "read",
    "read_model",
    "read_training",
    "state_from_model",
    "check_resume",
    "remove_stale_temporary",
    "state_from_training",
    "training_payload",
    "write_atomic",
]


class SettingMismatch(ValueError):
    """A setting given for a resumed run differs from the one the checkpoint was written with.

    Attributes
    ----------
    setting
        The setting's name: ``seed``, ``max_epochs`` or a :class:`~multidgd.config.TrainConfig`
        field (``batch_size``, ``precision``, ...).
    given, stored
        The value asked for and the checkpoint's.
    """

    def __init__(self, setting: str, given: Any, stored: Any, message: str) -> None:
        super().__init__(message)
        self.setting, self.given, self.stored = setting, given, stored


MODEL_KIND = "multidgd-model"
CHECKPOINT_KIND = "multidgd-training-checkpoint"
FORMAT_VERSION = 1


@dataclass
class ModelDescription:
    """What a model knows of its data without holding it: names, labels, K and a fingerprint.

    Attributes
    ----------
    obs_names
        Input cell names (cells dropped as empty included).
    kept
        (n_input,) bool: which input cells became data rows.
    var_names
        Modality -> feature names, in decoder order.
    covariate_keys, covariate_categories
        Covariate obs columns and the classes of each (learned classes appended).
    cell_type_key, cell_type_categories
        Cell-type obs column and its classes (None without one).
    source_modality
        ``rna``/``atac`` -> the modality's name in the data.
    n_components
        Basal mixture components K.
    fingerprint
        SHA-256 of the data (:meth:`multidgd.data.MultiomeData.fingerprint`).
    learned_classes
        Covariate key -> classes added after training by ``infer(new_classes="learn")``.
    """

    obs_names: pd.Index
    kept: np.ndarray
    var_names: dict[str, pd.Index]
    covariate_keys: list[str]
    covariate_categories: list[list[str]]
    cell_type_key: str | None
    cell_type_categories: list[str] | None
    source_modality: dict[str, str]
    n_components: int
    fingerprint: str
    learned_classes: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of_data(cls, data: MultiomeData, model_config: ModelConfig) -> ModelDescription:
        """The description of training data; K from the config, else the cell types, else 1."""
        if model_config.n_components is not None:
            n_components = model_config.n_components
        elif data.cell_type_categories is not None:
            n_components = len(data.cell_type_categories)
        else:
            n_components = 1
        return cls.from_payload(
            {
                "obs_names": list(data.input_obs_names),
                "kept": data.kept,
                "var_names": data.var_names,
                "covariate_keys": data.covariate_keys,
                "covariate_categories": data.covariate_categories,
                "cell_type_key": data.cell_type_key,
                "cell_type_categories": data.cell_type_categories,
                "source_modality": data.source_modality,
                "n_components": n_components,
                "fingerprint": data.fingerprint(),
            }
        )

    @classmethod
    def from_payload(cls, described: dict[str, Any]) -> ModelDescription:
        """The description stored under ``"model"`` in a file (plain lists and tensors)."""
        kept = described["kept"]
        cats = described["cell_type_categories"]
        return cls(
            obs_names=pd.Index([str(x) for x in described["obs_names"]]),
            kept=kept.numpy() if isinstance(kept, torch.Tensor) else np.asarray(kept, dtype=bool),
            var_names={m: pd.Index([str(x) for x in v]) for m, v in described["var_names"].items()},
            covariate_keys=list(described["covariate_keys"]),
            covariate_categories=[list(c) for c in described["covariate_categories"]],
            cell_type_key=described["cell_type_key"],
            cell_type_categories=None if cats is None else list(cats),
            source_modality=dict(described["source_modality"]),
            n_components=int(described["n_components"]),
            fingerprint=described["fingerprint"],
            learned_classes={k: list(v) for k, v in described.get("learned_classes", {}).items()},
        )

    def to_payload(self, model_config: ModelConfig) -> dict[str, Any]:
        """Plain values to store under ``"model"`` (with the format version and config)."""
        return {
            "format_version": FORMAT_VERSION,
            "model_config": model_config.to_dict(),
            "n_components": self.n_components,
            "obs_names": [str(x) for x in self.obs_names],
            "kept": torch.from_numpy(np.asarray(self.kept, dtype=bool)),
            "var_names": {m: [str(x) for x in v] for m, v in self.var_names.items()},
            "covariate_keys": list(self.covariate_keys),
            "covariate_categories": self.covariate_categories,
            "cell_type_key": self.cell_type_key,
            "cell_type_categories": self.cell_type_categories,
            "source_modality": self.source_modality,
            "fingerprint": self.fingerprint,
            "learned_classes": {k: list(v) for k, v in self.learned_classes.items()},
        }

    def build_module(self, model_config: ModelConfig, seed: int = 0) -> DGDModule:
        """A network shaped like the described model's, learned covariate classes included."""
        trained = [
            len(cats) - len(self.learned_classes.get(key, []))
            for key, cats in zip(self.covariate_keys, self.covariate_categories, strict=True)
        ]
        n_features = {m: len(v) for m, v in self.var_names.items()}
        module = DGDModule(n_features, trained, self.n_components, model_config, seed=seed)
        for v, key in enumerate(self.covariate_keys):
            if self.learned_classes.get(key):
                module.covariates[v].add_components(len(self.learned_classes[key]))
        return module


@dataclass
class TrainingState:
    """Everything that changes during training, so that a run can be resumed exactly."""

    module: DGDModule
    tables: dict[str, RepresentationTable]  # train_basal, train_covariate, val_basal, val_covariate
    train_index: np.ndarray  # rows of the data used for training, in table order
    val_index: np.ndarray
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = float("inf")
    best_snapshot: dict[str, Any] | None = None
    optimizer_states: dict[str, Any] | None = None
    shuffle_rng_state: torch.Tensor | None = None
    stopped_early: bool = False

    def cell_rows(self, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where every input cell lives in the tables.

        Parameters
        ----------
        kept
            (n_input,) bool: which input cells became data rows (the others were dropped).

        Returns
        -------
        (n_input,) table code (0 training, 1 validation, -1 none) and (n_input,) row in it.
        """
        kept_pos = np.flatnonzero(kept)  # data row -> input row
        where = np.full(len(kept), -1, dtype=np.int64)
        row = np.full(len(kept), -1, dtype=np.int64)
        for code, index in ((0, self.train_index), (1, self.val_index)):
            where[kept_pos[index]] = code
            row[kept_pos[index]] = np.arange(len(index))
        return where, row

    def per_cell(self, kept: np.ndarray, train: np.ndarray, val: np.ndarray) -> np.ndarray:
        """Rows of a training and a validation array placed at their input cells: (n_input,
        dim) float32, NaN for cells in neither.
        """
        where, row = self.cell_rows(kept)
        out = np.full((len(kept), train.shape[1]), np.nan, dtype=np.float32)
        for code, values in ((0, train), (1, val)):
            mask = where == code
            out[mask] = values[row[mask]]
        return out


def write_atomic(payload: dict[str, Any], path: str | Path) -> None:
    """Write with ``torch.save`` to a temporary file beside ``path``, then rename it over.

    A reader never sees a half-written file: an interrupted write leaves the previous file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read(path: str | Path, *, kind: str, mmap: bool = False) -> dict[str, Any]:
    """Load a file written by :func:`write_atomic` and check that it holds ``kind``.

    Only tensors and plain Python containers are unpickled (``weights_only=True``); with
    ``mmap`` the tensors are memory-mapped, not read (for a look at a few entries).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{path} is not a readable multidgd file: {reason}") from err
    found = payload.get("kind") if isinstance(payload, dict) else None
    if found != kind:
        raise ValueError(f"{path} holds {found!r}, expected {kind!r}")
    return payload


# ----------------------------------------------------------------------------- training checkpoints
def training_payload(
    state: TrainingState,
    *,
    module_state: dict[str, torch.Tensor],
    tables: dict[str, RepresentationTable],
    optimizers: dict[str, torch.optim.Optimizer],
    shuffle_rng_state: torch.Tensor,
    train_config: dict[str, Any],
    seed: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The training checkpoint of ``state`` (``tables``: whole tables, with Adam state)."""
    return {
        "kind": CHECKPOINT_KIND,
        "epoch": state.epoch,
        "module": module_state,
        "tables": {k: t.state_dict() for k, t in tables.items()},
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "shuffle_rng_state": shuffle_rng_state,
        "history": state.history,
        "best_epoch": state.best_epoch,
        "best_metric": state.best_metric,
        "best_snapshot": state.best_snapshot,
        "train_index": torch.from_numpy(state.train_index),
        "val_index": torch.from_numpy(state.val_index),
        "stopped_early": state.stopped_early,
        "train_config": train_config,
        "seed": seed,
        **(extra or {}),
    }


def read_training(path: str | Path, *, fingerprint: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """A training checkpoint's payload, refused when written for other data or another
    :class:`~multidgd.config.ModelConfig`.
    """
    payload = read(path, kind=CHECKPOINT_KIND)
    described = payload.get("model", {})
    if described.get("fingerprint") != fingerprint:
        raise ValueError(
            f"checkpoint {path} was written for other data (cells, features or labels differ); "
            "remove it or point checkpoint_path elsewhere"
        )
    if described.get("model_config") != model_config:
        raise ValueError(f"checkpoint {path} was written with another ModelConfig")
    return payload


def check_resume(payload: dict[str, Any], *, seed: int | None, config: Any, max_epochs: int) -> None:
    """Refuse to resume a training checkpoint with settings other than its own.

    Parameters
    ----------
    payload
        The training checkpoint.
    seed
        The seed asked for, or None (the checkpoint's).
    config
        The :class:`~multidgd.config.TrainConfig` asked for, or None (the checkpoint's).
    max_epochs
        Epochs asked for in all: at least the checkpoint's epoch (more extends training).

    Raises
    ------
    SettingMismatch
        Naming the first setting that differs; the message lists every one with both values.
    """
    stored_seed, stored, epoch = int(payload["seed"]), payload["train_config"], int(payload["epoch"])
    if seed is not None and int(seed) != stored_seed:
        raise SettingMismatch(
            "seed",
            seed,
            stored_seed,
            f"seed={seed} differs from the checkpoint's seed={stored_seed}; leave seed out to continue the run",
        )
    if config is not None:
        given = config.to_dict()
        diffs = {k: (v, stored.get(k)) for k, v in given.items() if stored.get(k) != v}
        if diffs:
            listed = ", ".join(f"{k}={v!r} (checkpoint: {old!r})" for k, (v, old) in diffs.items())
            first = next(iter(diffs))
            raise SettingMismatch(
                first,
                diffs[first][0],
                diffs[first][1],
                f"TrainConfig differs from the checkpoint's: {listed}; leave config out to continue the run",
            )
    if max_epochs < epoch:
        raise SettingMismatch(
            "max_epochs",
            max_epochs,
            epoch,
            f"max_epochs={max_epochs} is below the checkpoint's epoch {epoch}; give at least {epoch} "
            "(more extends the training)",
        )


def remove_stale_temporary(path: str | Path) -> bool:
    """Remove the temporary file a write to ``path`` left behind when it was killed.

    :func:`write_atomic` writes ``<name>.tmp`` and renames it over ``path``; after a kill
    during the write the ``.tmp`` file (the size of a checkpoint) stays. Returns whether one
    was removed.
    """
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    if tmp.is_file():
        tmp.unlink()
        return True
    return False


def state_from_training(payload: dict[str, Any], module: DGDModule) -> TrainingState:
    """The :class:`TrainingState` of a training checkpoint; ``module`` is shaped like the
    saved one and receives its parameters.
    """
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


# ----------------------------------------------------------------------------- model files
def model_payload(
    state: TrainingState,
    *,
    description: dict[str, Any],
    train_config: dict[str, Any],
    seed: int | None,
    library_size: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    """The model file of a trained ``state`` (parameters and representation values only)."""
    return {
        "kind": MODEL_KIND,
        "model": description,
        "module": {k: v.detach().cpu() for k, v in state.module.state_dict().items()},
        "tables": {k: t.values.detach().cpu() for k, t in state.tables.items()},
        "train_index": torch.from_numpy(state.train_index),
        "val_index": torch.from_numpy(state.val_index),
        "history": state.history,
        "best_epoch": state.best_epoch,
        "epoch": state.epoch,
        "train_config": train_config,
        "seed": seed,
        "library_size": library_size,
    }


#: Sections a model file must hold (``"model"``: the description).
MODEL_SECTIONS = ("model", "module", "tables", "train_index", "val_index", "history", "epoch", "best_epoch")
_DESCRIPTION_FIELDS = ("obs_names", "kept", "var_names", "covariate_keys", "covariate_categories", "n_components")


def read_model(path: str | Path) -> dict[str, Any]:
    """A model file's payload, its format version and sections checked."""
    payload = read(path, kind=MODEL_KIND)
    missing = [k for k in MODEL_SECTIONS if k not in payload]
    missing += [f"model.{k}" for k in _DESCRIPTION_FIELDS if "model" in payload and k not in payload["model"]]
    if missing:
        raise ValueError(f"{path}: the model file lacks its {', '.join(repr(k) for k in missing)} section(s)")
    version = payload["model"].get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format version {version}")
    return payload


def state_from_model(payload: dict[str, Any], module: DGDModule) -> TrainingState:
    """The (finished) :class:`TrainingState` of a model file; ``module`` receives its parameters."""
    module.load_state_dict(payload["module"])
    return TrainingState(
        module=module,
        tables={k: RepresentationTable(v) for k, v in payload["tables"].items()},
        train_index=payload["train_index"].numpy(),
        val_index=payload["val_index"].numpy(),
        epoch=int(payload["epoch"]),
        history=list(payload["history"]),
        best_epoch=int(payload["best_epoch"]),
    )
