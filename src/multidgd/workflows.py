"""The workflows behind the ``multidgd`` commands, as library functions.

The command line (:mod:`multidgd.cli`) only parses arguments, calls one of these and
prints what it returns:

* ``demo`` and ``train``: :func:`train_and_report`
* ``embed`` and ``predict``: :func:`embed_and_write`
* ``gene2peak``: :func:`gene2peak_and_write`
* ``links``: :func:`links_and_write`
* ``evaluate``: :func:`evaluate_and_write` (:func:`multidgd.evaluation.run_evaluation`)

Each checks its inputs and destinations before any training or inference: input files
(:func:`read_input`, :func:`load_model_file`), an output folder (:class:`OutputFolder`:
an earlier run in it, writability, free space) or output files (:class:`OutputFiles`,
written under temporary names and renamed into place at the end). Their messages name the
command-line arguments (``DATA``, ``MODEL``, ``--out``, ``--overwrite``, ...).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .data import MODALITIES, small_classes
from .metrics import MIN_COMPONENT_FRACTION, cluster_sizes, components_used
from .profiles import UNIFORM, check_threshold

__all__ = [
    "train_and_report",
    "embed_and_write",
    "gene2peak_and_write",
    "links_and_write",
    "differential_and_write",
    "evaluate_and_write",
    "RUN_FILES",
    "TEMP_PREFIX",
    "RunInterrupted",
    "OutputFolder",
    "OutputFiles",
    "check_input_file",
    "check_storage",
    "read_input",
    "load_model_file",
    "check_writable",
    "check_free_space",
    "estimate_model_bytes",
]

logger = logging.getLogger(__name__)

#: Files that ``train``, ``demo`` and ``evaluate`` write into their folder (glob patterns);
#: one of them in ``--out`` means that the folder holds an earlier run.
RUN_FILES = (
    "model.pt",
    "checkpoint.pt",
    "checkpoint.pt.tmp",
    "summary.json",
    "history.csv",
    "metrics.json",
    "report.md",
    "multidgd.h5mu",
    "multidgd.h5ad",
    "multidgd_results.h5ad",
    "training_curves.png",
    "umap.png",
    "covariate_*.png",
    "confusion.png",
    "holdout_covariate_space.png",
    "data_fraction.png",
)

#: Files of a train run that must not be an input (the data may not sit where results go).
_TRAIN_WRITES = ("model.pt", "checkpoint.pt", "multidgd.h5mu", "multidgd.h5ad", "multidgd_results.h5ad")

#: Prefix of the temporary files and folders the workflows write and rename (or remove).
TEMP_PREFIX = ".multidgd-tmp-"

#: Disk space kept for figures, tables and summaries on top of the estimated large files.
_MARGIN_BYTES = 8 * 2**20

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_DATA_FILES = ".h5mu (MuData), .h5ad (AnnData), .zarr or 10x .h5"
_MODEL_FILE = "a model file (the model.pt that multidgd train writes)"


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted before this run wrote a checkpoint to resume from."""


# ----------------------------------------------------------------------------- inputs


def _reason(err: BaseException) -> str:
    """Return the reason an exception gives, never blank, cut to its first sentence when long."""
    text = " ".join(str(err).split())
    if isinstance(err, KeyError):
        return f"missing entry {text}" if text else "missing entry"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return _brief(text) or type(err).__name__


def _brief(text: str, limit: int = 240) -> str:
    """``text``, or its first sentence when longer than ``limit`` (torch's advice runs long)."""
    end = text.find(". ", 60)
    return text[: end + 1] if len(text) > limit and end > 0 else text


def check_input_file(path: str | Path, what: str, *, expected: str) -> Path:
    """Refuse an input that does not exist, or a folder where a file is expected.

    Parameters
    ----------
    path
        The input.
    what
        Its command-line name (``DATA``, ``MODEL``, ``--split-csv``, ...).
    expected
        What is allowed, for the message.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    FileNotFoundError
        When nothing is there.
    ValueError
        For a folder (other than a ``.zarr`` store).
    """
    path = Path(path)
    if not path.exists():
        broken = " (a broken link)" if path.is_symlink() else ""
        raise FileNotFoundError(f"{what} {path}: no such file{broken}; expected {expected}")
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise ValueError(f"{what} {path}: is a folder; expected {expected}")
    return path


def _hdf5_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete HDF5 file (None: it opens)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as fh:
        head = fh.read(16)
        offset = 0  # the signature sits at 0, 512, 1024, 2048, ... (after a user block)
        while offset + 8 <= size:
            fh.seek(offset)
            if fh.read(8) == _HDF5_SIGNATURE:
                break
            offset = 512 if offset == 0 else 2 * offset
        else:
            return f"not an HDF5 file (it starts with {head!r}); .h5mu and .h5ad files are HDF5"
    import h5py

    try:
        with h5py.File(path, "r"):
            pass
    except OSError as err:
        return f"truncated or damaged HDF5 file ({_reason(err)}); write or copy it again"
    return None


def read_input(path: str | Path, *, what: str = "DATA", backed: bool = False):
    """Read a data file (:func:`multidgd.io.read`), refusing it with a message naming it.

    Parameters
    ----------
    path
        ``.h5mu``, ``.h5ad``, ``.zarr`` or a 10x ``.h5``.
    what
        Its command-line name, for messages.
    backed
        Leave the counts on disk.

    Returns
    -------
    MuData or AnnData

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, a folder, an empty, truncated or non-HDF5 file, or one that cannot
        be read, with the reason.
    """
    from .io import read

    path = check_input_file(path, what, expected=f"a {_DATA_FILES} file")
    kind = {".h5mu": "a MuData (.h5mu)", ".h5ad": "an AnnData (.h5ad)", ".h5": "a 10x .h5 file"}.get(
        path.suffix.lower()
    )
    if kind is not None and path.is_file():
        problem = _hdf5_problem(path)
        if problem:
            raise ValueError(f"{what} {path}: cannot be read as {kind}: {problem}")
    try:
        return read(path, backed=backed)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise ValueError(f"{what} {_brief(str(err))}") from err
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise ValueError(f"{what} {path}: cannot be read ({type(err).__name__}: {_reason(err)})") from err


def load_model_file(path: str | Path, *, what: str = "MODEL"):
    """Load a model file (:meth:`multidgd.DGD.load`), refusing it with a message naming it.

    Parameters
    ----------
    path
        A ``model.pt``.
    what
        Its command-line name, for messages.

    Returns
    -------
    multidgd.DGD

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, a folder, a file that is not a model (a checkpoint, another
        program's file) or lacks a section, with the reason.
    """
    from .model import DGD

    path = check_input_file(path, what, expected=_MODEL_FILE)
    try:
        return DGD.load(path)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        text = _reason(err)
        if isinstance(err, KeyError):
            text = f"the file lacks its {str(err)} section; it is incomplete or not {_MODEL_FILE}"
        elif "multidgd-training-checkpoint" in text:
            text += "; give the model.pt that train writes, not its checkpoint.pt"
        elif "holds None," in text:
            text = text.replace("holds None,", "holds no multidgd content (another program's file?),")
        if text.startswith(str(path)):
            raise ValueError(f"{what} {text}") from err
        raise ValueError(f"{what} {path}: {text}") from err


def _input_bytes(path: Path | None) -> int:
    """Size of an input file (a folder: of its files; 0 when unknown)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- destinations


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` when it is not a folder (None otherwise)."""
    for parent in path.absolute().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def _make_folders(path: Path, option: str) -> list[Path]:
    """Create ``path`` and its missing parents; return those created, outermost first."""
    missing = []
    p = path.absolute()
    while not p.exists():
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    for p in reversed(missing):
        try:
            p.mkdir()
        except OSError as err:
            _remove_folders(made)
            raise ValueError(f"{option} {path}: cannot create the folder {p} ({_reason(err)})") from err
        made.append(p)
    return made


def _remove_folders(made: list[Path]) -> None:
    """Remove folders this run created, innermost first, each only when empty."""
    for p in reversed(made):
        try:
            p.rmdir()
        except OSError:
            pass


def check_writable(folder: Path, option: str) -> None:
    """Write a probe file into ``folder`` and remove it.

    Parameters
    ----------
    folder
        An existing folder.
    option
        What is written there, for the message (e.g. ``--out results``).

    Raises
    ------
    ValueError
        Naming ``option`` and the reason, when the file cannot be written.
    """
    try:
        fd, probe = tempfile.mkstemp(prefix=".multidgd-probe-", dir=folder)
    except OSError as err:
        where = "" if option.endswith(str(folder)) else f" in {folder}"
        raise ValueError(f"{option}: cannot write{where} ({_reason(err)}); choose a writable place") from err
    os.close(fd)
    os.remove(probe)


def _mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n / 2**10:,.0f} KiB"


def check_free_space(folder: Path, needed: int, option: str) -> None:
    """Refuse a destination with less free space than ``needed`` bytes.

    Parameters
    ----------
    folder
        An existing folder.
    needed
        Bytes the run writes there (an estimate).
    option
        What is written there, for the message (e.g. ``--out results``).

    Raises
    ------
    ValueError
        Naming ``option``, the space free and the space needed.
    """
    free = shutil.disk_usage(folder).free
    if free < needed:
        where = "" if option.endswith(str(folder)) else f" in {folder}"
        raise ValueError(
            f"{option}: {_mb(free)} free{where}, but this run writes about {_mb(needed)} "
            f"(a conservative estimate); free some space or write elsewhere"
        )


def _stat(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _remove_temporaries(folder: Path, pattern: str = "*") -> None:
    """Remove temporary files and folders (:data:`TEMP_PREFIX`) a killed run left in ``folder``."""
    if folder.is_dir():
        for p in folder.glob(f"{TEMP_PREFIX}{pattern}"):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@dataclass
class OutputFolder:
    """The output folder of ``train``, ``demo`` or ``evaluate``, checked before any work.

    :meth:`check` refuses a file, a folder holding an earlier run (:data:`RUN_FILES`)
    unless ``overwrite`` or ``resume``, and a run that would write over an input;
    :meth:`open` creates the folder, writes a probe file and checks the free space
    (:meth:`run`: the same, undone when the block fails); :meth:`finish` removes, with
    ``overwrite``, the earlier run's files this run did not write again; :meth:`abandon`
    removes the folders a failed run created (when empty).
    Nothing that existed before is removed otherwise.

    Attributes
    ----------
    path
        The folder.
    overwrite
        Replace an earlier run.
    option
        Its command-line name, for messages.
    inputs
        Command-line name -> input file, never written over or removed.
    earlier
        The earlier run's files found by :meth:`check`, with (inode, mtime, size).
    made
        Folders :meth:`open` created, outermost first.
    """

    path: Path
    overwrite: bool = False
    option: str = "--out"
    inputs: dict[str, Path] = field(default_factory=dict)
    earlier: dict[Path, tuple[int, int, int]] = field(default_factory=dict)
    made: list[Path] = field(default_factory=list)

    @classmethod
    def check(
        cls,
        path: str | Path,
        *,
        overwrite: bool = False,
        resume: bool | None = None,
        inputs: dict[str, Any] | None = None,
        writes: tuple[str, ...] = (),
        option: str = "--out",
    ) -> OutputFolder:
        """Check the folder without changing anything.

        Parameters
        ----------
        path
            The folder (it may not exist yet).
        overwrite
            Allow an earlier run in it (replaced by this one).
        resume
            Allow an earlier run (continued); None: the command cannot resume.
        inputs
            Command-line name -> input path (None entries are ignored).
        writes
            Names of files this run writes into the folder; none may be an input.
        option
            The folder's command-line name.

        Returns
        -------
        OutputFolder
        """
        path = Path(path)
        inputs = {k: Path(v) for k, v in (inputs or {}).items() if v is not None}
        if path.exists() and not path.is_dir():
            raise ValueError(f"{option} {path}: is a file; expected a folder (an existing one or a new name)")
        blocker = _file_above(path)
        if blocker is not None:
            raise ValueError(f"{option} {path}: {blocker} is a file, so no folder can be made there")
        for name in writes:
            for what, p in inputs.items():
                if _same_file(path / name, p):
                    raise ValueError(
                        f"{option} {path}: this run writes {name} there, which is the input {what} {p}; "
                        f"choose another {option}"
                    )
        earlier = {p: _stat(p) for pattern in RUN_FILES for p in path.glob(pattern) if p.is_file()}
        if earlier and not (overwrite or resume):
            names = sorted(p.name for p in earlier)
            listed = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            how = "pass --overwrite to replace it" + (", --resume to continue it" if resume is not None else "")
            raise ValueError(f"{option} {path}: holds an earlier run ({listed}); {how}, or choose another {option}")
        return cls(path, overwrite, option, inputs, earlier)

    def open(self, needed_bytes: int = 0) -> None:
        """Create the folder (and missing parents), write a probe file, check the free space.

        Temporary files a killed run left (:data:`TEMP_PREFIX`) are removed.
        """
        self.made = _make_folders(self.path, self.option)
        try:
            check_writable(self.path, f"{self.option} {self.path}")
            check_free_space(self.path, needed_bytes, f"{self.option} {self.path}")
        except BaseException:
            self.abandon()
            raise
        _remove_temporaries(self.path)

    def is_input(self, path: Path) -> bool:
        """Whether ``path`` is one of the inputs."""
        return any(_same_file(path, p) for p in self.inputs.values())

    def unchanged(self, path: Path) -> bool:
        """Whether ``path`` is a file of the earlier run that this run has not written again."""
        key = self.earlier.get(path)
        return key is not None and path.is_file() and _stat(path) == key

    def finish(self) -> None:
        """After a successful run with ``overwrite``: remove the earlier run's files it did not write."""
        if self.overwrite:
            for p in self.earlier:
                if self.unchanged(p) and not self.is_input(p):
                    p.unlink()

    def abandon(self) -> None:
        """After a failed run: remove the folders :meth:`open` created, when empty."""
        _remove_folders(self.made)
        self.made = []

    @contextmanager
    def run(self, needed_bytes: int = 0) -> Iterator[OutputFolder]:
        """:meth:`open`, and :meth:`abandon` when the block fails (:meth:`finish` is the caller's)."""
        self.open(needed_bytes)
        try:
            yield self
        except BaseException:
            self.abandon()
            raise

    @contextmanager
    def staged(self) -> Iterator[Path]:
        """A fresh hidden folder inside for a run's outputs, moved into the folder when the
        block ends and removed, with whatever is in it, when the block fails.
        """
        stage = self.path / f"{TEMP_PREFIX}{os.getpid()}"
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        for p in sorted(stage.iterdir()):
            os.replace(p, self.path / p.name)
        stage.rmdir()


@dataclass
class OutputFiles:
    """Output files of ``embed``, ``predict`` or ``gene2peak``, checked before any work.

    :meth:`check` refuses a folder, an input, two options naming one file, and an existing
    file unless ``overwrite``; :meth:`run` creates missing folders, probes and checks the
    free space, then the outputs are written under :meth:`temporary` names beside their
    destinations and renamed into place when the block ends (removed when it fails).

    Attributes
    ----------
    overwrite
        Replace existing files.
    inputs
        Command-line name -> input file, never written over.
    planned
        Destination -> its command-line name.
    earlier
        With ``overwrite``: existing files matched by :meth:`claim`, removed at the end
        unless written again.
    staged
        Destination -> temporary file.
    made
        Folders created, outermost first.
    """

    overwrite: bool = False
    inputs: dict[str, Path] = field(default_factory=dict)
    planned: dict[Path, str] = field(default_factory=dict)
    earlier: list[Path] = field(default_factory=list)
    staged: dict[Path, Path] = field(default_factory=dict)
    made: list[Path] = field(default_factory=list)

    @classmethod
    def of(cls, inputs: dict[str, Any], *, overwrite: bool = False) -> OutputFiles:
        """Output files of a command with these inputs (None entries are ignored)."""
        return cls(overwrite, {k: Path(v) for k, v in inputs.items() if v is not None})

    def check(self, path: str | Path, option: str, *, plan: bool = True) -> Path:
        """Check one destination; with ``plan`` it is also kept for :meth:`run`.

        Returns
        -------
        pathlib.Path
            ``path``.
        """
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"{option} {path}: is a folder; expected a file name")
        blocker = _file_above(path)
        if blocker is not None:
            raise ValueError(f"{option} {path}: {blocker} is a file, so nothing can be written there")
        for what, p in self.inputs.items():
            if _same_file(path, p):
                raise ValueError(f"{option} {path}: is the input {what}; write the result elsewhere")
        for other, name in self.planned.items():
            if name != option and (other.absolute() == path.absolute() or _same_file(other, path)):
                raise ValueError(f"{option} and {name} both name {path}; give them different names")
        if path.exists() and not self.overwrite:
            raise ValueError(f"{option} {path}: exists (an earlier output); pass --overwrite to replace it")
        if plan:
            self.planned[path] = option
        return path

    def claim(self, folder: Path, pattern: str, option: str) -> None:
        """Files matching ``pattern`` in ``folder`` are this command's outputs of an earlier run:
        refused without ``overwrite``, removed at the end unless written again.
        """
        found = sorted(p for p in folder.glob(pattern) if p.is_file()) if folder.is_dir() else []
        for p in found:
            if any(_same_file(p, i) for i in self.inputs.values()):
                raise ValueError(f"{option}: this run writes {p}, which is an input; rename that input")
        if found and not self.overwrite:
            listed = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
            raise ValueError(f"{option}: earlier outputs exist ({listed}); pass --overwrite to replace them")
        self.earlier += found

    def temporary(self, destination: Path) -> Path:
        """The temporary file to write ``destination`` to (same folder and suffixes)."""
        tmp = destination.with_name(f"{TEMP_PREFIX}{os.getpid()}.{destination.name}")
        self.staged[destination] = tmp
        return tmp

    @contextmanager
    def run(self, needed_bytes: int = 0) -> Iterator[OutputFiles]:
        """Create the destinations' folders, probe them, check free space; rename the
        :meth:`temporary` files into place when the block ends, remove them when it fails.
        """
        try:
            for folder in dict.fromkeys(p.parent for p in self.planned):
                path, option = next((p, o) for p, o in self.planned.items() if p.parent == folder)
                self.made += _make_folders(folder, option)
                check_writable(folder, f"{option} {path}")
                check_free_space(folder, needed_bytes, f"{option} {path}")
                for p in self.planned:
                    if p.parent == folder:
                        _remove_temporaries(folder, f"*.{p.name}")
            yield self
            for destination, tmp in self.staged.items():
                os.replace(tmp, destination)
            for p in self.earlier:
                if p not in self.staged and p.is_file():
                    p.unlink()
        except BaseException:
            for tmp in self.staged.values():
                tmp.unlink(missing_ok=True)
            _remove_folders(self.made)
            raise


# ----------------------------------------------------------------------------- disk space


def _decoder_parameters(input_dim: int, n_features: dict[str, int], config) -> int:
    """Parameters of the decoder (:class:`~multidgd.decoder.Decoder`) and dispersions."""
    from .decoder import head_width

    h = config.hidden_dim
    width, total = input_dim, 0
    for _ in range(config.n_trunk):
        total += (width + 1) * h
        width = h
    for n_out in n_features.values():
        w_in = width
        for _ in range(config.n_head - 2):
            total += (w_in + 1) * h
            w_in = h
        if config.n_head >= 2:
            w = head_width(h, n_out)
            total += (w_in + 1) * w
            w_in = w
        total += (w_in + 1) * n_out + n_out
    return total


def estimate_model_bytes(n_cells: int, n_features: dict[str, int], config, n_covariates: int) -> tuple[int, int]:
    """Estimate the sizes of a model file and of a training checkpoint, in bytes.

    float32 values: the decoder's parameters P (from the layer sizes, dispersions
    included) and the representations R = cells x (``latent_dim`` + ``covariate_dim`` x
    covariates). The model file holds P + R values; a checkpoint holds each with its two
    Adam moments and the best epoch's copy, 4 (P + R), plus 1 MiB for the mixtures,
    history and names. Measured checkpoints are a little smaller.

    Parameters
    ----------
    n_cells
        Cells trained on (training and validation).
    n_features
        Modality -> number of features.
    config
        The :class:`~multidgd.ModelConfig`.
    n_covariates
        Number of covariates.

    Returns
    -------
    (int, int)
        Model file bytes, checkpoint bytes.
    """
    input_dim = config.latent_dim + config.covariate_dim * n_covariates
    values = _decoder_parameters(input_dim, n_features, config) + n_cells * input_dim
    return 4 * values + 2**20, 16 * values + 2**20


def _train_bytes(model, *, resume: bool, backed: bool, data_bytes: int) -> int:
    """Disk space a training run writes: two checkpoints (the previous one stays until the
    next is written; one when resuming next to an existing one), the model, the annotated
    data (about the input's size) or, for backed data, the results alone, and a margin.
    """
    n_features = {m: len(v) for m, v in model.var_names.items()}
    n_cov = len(model.covariate_keys)
    model_bytes, checkpoint_bytes = estimate_model_bytes(len(model.obs_names), n_features, model.config, n_cov)
    results = len(model.obs_names) * (model.config.latent_dim + 2 * n_cov + 4) * 4
    return (1 if resume else 2) * checkpoint_bytes + model_bytes + (results if backed else data_bytes) + _MARGIN_BYTES


# ----------------------------------------------------------------------------- helpers


def _record_run(data: Any, model, what: str, **settings: Any) -> None:
    """Write ``data.uns["multidgd"]``: the version, what ran, the model's and training's settings
    and the process's command line (the settings as JSON text, which every file format keeps).
    """
    import sys

    from . import __version__

    data.uns["multidgd"] = {
        "version": __version__,
        "run": what,
        "model_config": json.dumps(model.config.to_dict()),
        "train_config": json.dumps(model.train_config.to_dict() if model.train_config else None),
        "seed": -1 if model.seed is None else int(model.seed),
        "settings": json.dumps(settings, default=str),
        "process_argv": " ".join(sys.argv),
    }


def _obs_frame(index) -> Any:
    import pandas as pd

    return pd.DataFrame(index=pd.Index([str(x) for x in index]))


def _nan_mean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return None if np.isnan(values).all() else round(float(np.nanmean(values)), 3)


def _obs_labels(data: Any, key: str, obs_names) -> np.ndarray:
    from .data import obs_column

    return obs_column(data, key, obs_names).astype(str).to_numpy()


def _write_table(table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


# ----------------------------------------------------------------------------- train


def _is_backed(data: Any) -> bool:
    from .data import is_backed

    return is_backed(data) or any(is_backed(a) for a in getattr(data, "mod", {}).values())


def _write_annotated(
    data: Any,
    model,
    out: Path,
    *,
    predict_missing: bool = False,
    threshold: float | str | None = None,
    dense: bool = False,
) -> tuple[Path, float | None]:
    """Write the data with the model's results (or, for backed data, the results alone); for a
    mosaic also what its single-modality cells lack (:func:`_mosaic_predictions`). Returns
    the file and the temperature of the cluster probabilities p(k | counts) (None for backed
    data, whose probabilities are the responsibilities p(k | z)).
    """
    from .io import add_results, write

    if _is_backed(data):
        # the counts stay in the input file; the results go into a file of their own
        import anndata as ad

        results = ad.AnnData(obs=_obs_frame(data.obs_names))
        add_results(results, model)
        return write(results, out / "multidgd_results"), None
    clustering = model.cluster(data)
    logger.info(
        "cluster probabilities: p(k | counts) of each cell at temperature %.3g (fitted to the clusters)",
        clustering.temperature,
    )
    add_results(data, model, embedding=_place_left_out(data, model), clustering=clustering)
    if model.data is not None and model.data.present is not None:
        data = _mosaic_predictions(data, model, predict=predict_missing, threshold=threshold, dense=dense)
    _record_run(data, model, "train", n_components_choice=model.n_components_choice)
    return write(data, out / "multidgd"), clustering.temperature


def _mosaic_predictions(data: Any, model, *, predict: bool, threshold: float | str | None, dense: bool = False):
    """A mosaic's training cells that lack a modality: ``obs["multidgd_prediction_certainty"]``
    (:meth:`~multidgd.DGD.training_embedding`; NaN for cells with both modalities) and, with
    ``predict``, a ``<modality>_predicted`` modality per missing modality holding the
    predicted counts (the posterior prediction, stored as :func:`_predicted_modality` says).
    Returns the data (a MuData).
    """
    import anndata as ad
    import mudata as md

    if isinstance(data, ad.AnnData):
        data = md.MuData({model.source_modality.get("rna", "rna"): data})
    trained = (model.split != "none").to_numpy()
    certainty = pd.Series(np.nan, index=pd.Index(data.obs_names.astype(str)))
    lacking = {}
    for j in range(len(MODALITIES)):
        names = model.obs_names[trained & ~model.data.present[:, j]]
        if len(names):
            lacking[j] = model.training_embedding(data[certainty.index.isin(names)].copy(), progress_bar=False)
            certainty.loc[lacking[j].obs_names] = lacking[j].prediction_certainty
    for j, emb in lacking.items() if predict else ():
        pred = _predicted_modality(model, emb, j, threshold=threshold, dense=dense)
        pred.obs["prediction_certainty"] = emb.prediction_certainty
        data.mod[f"{model.source_modality.get(MODALITIES[j], MODALITIES[j])}_predicted"] = pred
    data.update()
    data.obs["multidgd_prediction_certainty"] = certainty.to_numpy()
    return data


def _place_left_out(data: Any, model):
    """Embedding of the cells training left out that have counts in some modality (None if none)."""
    from .query import read_query

    left_out = (model.split == "none").to_numpy()
    if not left_out.any():
        return None
    sub = data[left_out]
    query = read_query(
        sub,
        var_names=model.var_names,
        modality_names=model.modality_names(),
        covariate_keys=model.covariate_keys,
        min_feature_fraction=0,
    )
    has = query.present.any(axis=1)
    if not has.any():
        return None
    logger.info("placing %d cells left out of training (e.g. with one modality) with infer()", int(has.sum()))
    return model.infer(sub[has].copy(), progress_bar=False)


def _train_figures(data: Any, model, out: Path, *, cell_type_key: str | None, seed: int):
    """Training curves, UMAP and covariate spaces; returns (figures, cell types, clusters)."""
    from .plotting import plot_history, plot_model_covariates, plot_umap, umap_coordinates

    figures = [plot_history(model.history, out / "training_curves.png", best_epoch=model.best_epoch)]
    latent = model.get_latent_representation()
    ok = ~np.isnan(latent).any(axis=1)
    clusters = model.cluster().labels
    colorings = {"cluster": clusters[ok]}
    cell_types = None
    if cell_type_key:
        cell_types = _obs_labels(data, cell_type_key, model.obs_names)
        colorings = {"cell type": cell_types[ok], **colorings}
    coords = np.full((len(latent), 2), np.nan)
    coords[ok] = umap_coordinates(latent[ok], seed=seed)
    figures.append(plot_umap(coords[ok], colorings, out / "umap.png", title="UMAP of the basal latent"))
    for key in model.covariate_keys:
        labels = _obs_labels(data, key, model.obs_names)
        figures.append(plot_model_covariates(model, key, labels, out / f"covariate_{key}.png"))
    return figures, cell_types, clusters


def _one_cell_per_type(cell_types: np.ndarray) -> bool:
    """Whether every cell type has a single cell: an ARI against them would mean nothing."""
    codes, categories = pd.factorize(np.asarray(cell_types).astype(str))
    small = small_classes(codes, list(categories), 2)
    if categories.size and len(small) == len(categories):
        logger.warning("every cell type has one training cell; the ARI against cell types is not reported")
        return True
    return False


def _train_summary(model, *, source: str, clusters: np.ndarray, cell_types, t0: float, train_seconds: float):
    """Summarize a training run (without ``outputs``)."""
    history = model.history
    train_cells = np.zeros(len(clusters), dtype=bool)
    train_cells[(model.split == "train").to_numpy()] = True
    best = history.loc[model.best_epoch]
    summary: dict[str, Any] = {
        "data": source,
        "cells": int(len(model.obs_names)),
        "cells_trained": int(len(model.state.train_index)),
        "cells_validation": int(len(model.state.val_index)),
        "genes": len(model.var_names["rna"]),
        "peaks": len(model.var_names["atac"]),
        "components": model.n_components,
        **({"components_chosen": model.n_components_choice} if model.n_components_choice else {}),
        "components_used": components_used(clusters[train_cells], model.n_components),
        "components_used_rule": f"components holding at least {MIN_COMPONENT_FRACTION:.0%} of the training cells",
        "cluster_sizes": cluster_sizes(clusters[train_cells], model.n_components).tolist(),
        "epochs": int(model.state.epoch),
        "best_epoch": int(model.best_epoch),
        "stopped_early": bool(model.state.stopped_early),
        "train_nll_rna": float(best["train_nll_rna"]),
        "train_nll_atac": float(best["train_nll_atac"]),
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(float(history["seconds"].median()), 3),
    }
    if "val_nll_rna" in best:
        summary["val_nll_rna"] = float(best["val_nll_rna"])
        summary["val_nll_atac"] = float(best["val_nll_atac"])
    summary["denoise_own_weight"] = model.denoise_weights  # fitted on validation cells (1: not fitted)
    if model.data is not None and model.data.present is not None:  # a mosaic: the cells of each kind used
        from .data import mosaic_kinds

        used = np.concatenate([model.state.train_index, model.state.val_index])
        summary["cells_by_kind"] = mosaic_kinds(model.data.present[used])
    if cell_types is not None and not _one_cell_per_type(cell_types[train_cells]):
        from sklearn.metrics import adjusted_rand_score

        summary["ari_clusters_vs_cell_type"] = round(
            float(adjusted_rand_score(cell_types[train_cells], clusters[train_cells])), 4
        )
    return summary


def _stored_train_config(path: Path):
    """The :class:`~multidgd.TrainConfig` a training checkpoint was written with (memory-mapped read)."""
    from .checkpoint import CHECKPOINT_KIND, read
    from .config import TrainConfig

    try:
        return TrainConfig.from_dict(read(path, kind=CHECKPOINT_KIND, mmap=True)["train_config"])
    except (ValueError, KeyError) as err:  # re-raised as advice for the command line
        reason = _reason(err).rstrip(".")
        raise ValueError(f"--resume: {reason}; start afresh with --overwrite instead of --resume") from err


def _train_config(checkpoint_path: Path, *, resume: bool, batch_size: int | None, precision: str | None):
    """The :class:`~multidgd.TrainConfig` to train with (None: the checkpoint's).

    A fresh run takes the defaults with the options given; a resumed run the checkpoint's
    configuration with the options given, so that only those are compared to it.
    """
    import dataclasses

    from .config import TrainConfig

    given = {k: v for k, v in (("batch_size", batch_size), ("precision", precision)) if v is not None}
    if resume and checkpoint_path.is_file():
        return dataclasses.replace(_stored_train_config(checkpoint_path), **given) if given else None
    return TrainConfig(**given)


def _fit(model, folder: OutputFolder, *, checkpoint_path: Path, resume: bool, **train_kw: Any) -> None:
    """Train; an interrupt before this run wrote a checkpoint raises :class:`RunInterrupted`."""
    try:  # DGD.train removes a checkpoint.pt.tmp a killed write left
        model.train(checkpoint_path=checkpoint_path, resume=resume, **train_kw)
    except ValueError as err:
        text = str(err)
        if not (resume and str(checkpoint_path) in text and "not a readable" in text):
            raise
        raise ValueError(
            f"--resume: {_brief(text).rstrip('.')}; start afresh with --overwrite instead of --resume"
        ) from err
    except KeyboardInterrupt:
        if not checkpoint_path.is_file() or (folder.unchanged(checkpoint_path) and not resume):
            earlier = f"; the earlier run in {folder.path} is as it was" if folder.earlier else ""
            raise RunInterrupted(
                f"interrupted before this run wrote a checkpoint; nothing to resume{earlier}"
            ) from None
        raise


def _write_training_outputs(
    data, model, out: Path, *, source: str, cell_type_key, seed: int, t0: float, t1: float, **kw: Any
):
    """Model, annotated data, history, figures and ``summary.json``; returns the summary.
    ``kw``: :func:`_write_annotated`'s ``predict_missing``, ``threshold`` and ``dense``.
    """
    model.save(out / "model.pt", overwrite=True)  # the output folder was checked before training
    data_path, temperature = _write_annotated(data, model, out, **kw)
    model.history.to_csv(out / "history.csv")
    figures, cell_types, clusters = _train_figures(data, model, out, cell_type_key=cell_type_key, seed=seed)
    summary = _train_summary(model, source=source, clusters=clusters, cell_types=cell_types, t0=t0, train_seconds=t1)
    summary["cluster_probability"] = (
        "responsibility p(k | z) at the representation"
        if temperature is None
        else f"p(k | counts): counts scored at each component, likelihood tempered by {temperature:.3g}"
    )
    summary["outputs"] = sorted(str(p.name) for p in [data_path, out / "model.pt", out / "history.csv", *figures])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train_and_report(
    data: Any,
    out: Path,
    *,
    source: str,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    layer: str | None = None,
    cell_type_key: str | None = None,
    covariate_keys: list[str] | None = None,
    n_components: int | None = None,
    max_epochs: int = 1000,
    seed: int | None = 0,
    device: str = "auto",
    resume: bool = False,
    batch_size: int | None = None,
    precision: str | None = "float32",
    progress_bar: bool = True,
    overwrite: bool = False,
    inputs: dict[str, Any] | None = None,
    predict_missing: bool = False,
    threshold: float | str | None = None,
    dense: bool = False,
) -> dict[str, Any]:
    """Train on ``data`` and write model, annotated data, figures and a summary into ``out``.

    Before training, ``out`` is checked (:class:`OutputFolder`: an earlier run in it needs
    ``overwrite`` or ``resume``; it must be writable and have room for the estimated
    checkpoint, model and results) and the data and options are validated; a failed start
    removes the folder it created. A checkpoint's temporary file a killed write left is
    removed.

    Parameters
    ----------
    data
        MuData or AnnData (in memory or backed); backed data gets its results written to
        ``multidgd_results.h5ad``, other data is written annotated.
    out
        Output directory; ``checkpoint.pt`` there is written during training.
    source
        Name of the data in the summary.
    rna_mod, atac_mod, layer, cell_type_key, covariate_keys, n_components
        As for :class:`~multidgd.DGD` (``n_components``: :class:`~multidgd.ModelConfig`'s).
    max_epochs, seed, device, resume
        As for :meth:`~multidgd.DGD.train` (``resume`` continues from the checkpoint;
        ``seed`` None: 0, or the checkpoint's when resuming).
    batch_size, precision
        :class:`~multidgd.TrainConfig` settings (None: the default, or the checkpoint's
        when resuming; given ones must equal the checkpoint's).
    progress_bar
        Show training progress.
    overwrite
        Replace an earlier run in ``out``: its files are written again, and those this run
        does not write (e.g. figures of other covariates) are removed at the end.
    inputs
        Command-line name -> input file: never written over, and sized for the space check.
    predict_missing, threshold, dense
        A mosaic's training cells that lack a modality always get
        ``obs["multidgd_prediction_certainty"]``; with ``predict_missing`` the written data
        also holds ``<modality>_predicted`` modalities with their predicted counts, stored as
        :func:`embed_and_write` says for the same ``threshold`` and ``dense``.

    Returns
    -------
    dict
        The summary, also written as ``summary.json``; empty on processes other than the
        main one of a distributed run.
    """
    from .config import ModelConfig
    from .distributed import is_main
    from .model import DGD

    check_storage(threshold, dense)
    out = Path(out)
    folder = OutputFolder.check(out, overwrite=overwrite, resume=resume, inputs=inputs, writes=_TRAIN_WRITES)
    t0 = time.perf_counter()
    model_config = None if n_components is None else ModelConfig(n_components=n_components)
    names = {"rna_mod": rna_mod, "atac_mod": atac_mod, "layer": layer, "cell_type_key": cell_type_key}
    model = DGD(data, covariate_keys=covariate_keys or [], config=model_config, **names)
    checkpoint_path = out / "checkpoint.pt"
    resuming = resume and checkpoint_path.is_file()
    config = _train_config(checkpoint_path, resume=resume, batch_size=batch_size, precision=precision)
    seed = 0 if seed is None and not resuming else seed
    data_bytes = sum(_input_bytes(p) for p in folder.inputs.values())
    needed = _train_bytes(model, resume=resuming, backed=_is_backed(data), data_bytes=data_bytes)
    with folder.run(needed if is_main() else 0):
        train_kw = {"max_epochs": max_epochs, "seed": seed, "device": device, "progress_bar": progress_bar}
        _fit(model, folder, checkpoint_path=checkpoint_path, resume=resume, config=config, **train_kw)
        if not is_main():  # every process has the whole model; rank 0 writes the outputs
            return {}
        kw = {"source": source, "cell_type_key": cell_type_key, "seed": model.seed if seed is None else seed}
        kw.update(t0=t0, t1=time.perf_counter() - t0, predict_missing=predict_missing)
        kw.update(threshold=threshold, dense=dense)
        summary = _write_training_outputs(data, model, out, **kw)
    folder.finish()
    return summary


# ----------------------------------------------------------------------------- embed, predict


def _add_predictions(data, model, emb, *, denoise: bool, threshold, dense: bool = False, prediction: str = "posterior"):
    """Add a ``<modality>_predicted`` modality for every modality some cells lack.

    Returns the (MuData) data and the names of the modalities added.
    """
    import anndata as ad
    import mudata as md

    if isinstance(data, ad.AnnData):
        present = [m for j, m in enumerate(MODALITIES) if emb.observed[:, j].any()]
        name = model.source_modality[present[0]] if len(present) == 1 else "input"
        data = md.MuData({name: data})
    predicted = []
    for j, m in enumerate(MODALITIES):
        if emb.observed[:, j].all() and not denoise:
            continue
        key = f"{model.source_modality.get(m, m)}_predicted"
        pred = _predicted_modality(model, emb, j, threshold=threshold, dense=dense, prediction=prediction)
        pred.obs["observed"] = emb.observed[:, j]
        data.mod[key] = pred
        predicted.append(key)
    data.update()
    return data, predicted


def check_storage(threshold: float | str | None, dense: bool) -> None:
    """Refuse a storage choice for predictions that cannot be carried out (CLI names)."""
    if threshold is None:
        return
    if dense:
        raise ValueError("--threshold and --dense exclude each other: --dense stores every prediction dense")
    check_threshold(threshold, "--threshold")


def _predicted_modality(
    model, emb, j: int, *, threshold: float | str | None, dense: bool = False, prediction: str = "posterior"
):
    """AnnData of the predicted counts of modality ``j`` for the cells of ``emb``, with obs
    ``library_size`` and ``library_size_source`` and the features' ``var``. Stored as CSR of
    the values >= ``threshold`` when one is given (a number, or ``"uniform"``: the features
    above a flat profile); without one, ATAC as CSR with ``"uniform"`` and RNA dense; dense
    float32 with ``dense``.
    """
    import anndata as ad
    import scipy.sparse as sp

    m = MODALITIES[j]
    getter = model.get_normalized_expression if m == "rna" else model.get_normalized_accessibility
    if threshold is None and m == "atac":
        threshold = UNIFORM
    sparse = threshold is not None and not dense
    kw = {"return_type": "sparse", "threshold": threshold} if sparse else {"return_type": "array"}
    x = getter(emb, scale="counts", prediction=prediction, **kw)
    if not sp.issparse(x):
        x = x.astype(np.float32)
    pred = ad.AnnData(x, obs=_obs_frame(emb.obs_names), var=_feature_frame(model.var_names[m], m))
    pred.obs["library_size"] = emb.library_size[:, j]
    pred.obs["library_size_source"] = emb.library_size_source[:, j]
    return pred


def _feature_frame(names, modality: str):
    """``var`` of predicted features: the names, and for peaks whose names hold them, chrom/start/end."""
    from .analysis.genome import parse_peak_coordinates

    var = _obs_frame(names)
    if modality == "atac":
        coords = parse_peak_coordinates(var.index, errors="coerce")
        if (coords["start"] >= 0).all():
            var[["chrom", "start", "end"]] = coords.to_numpy()
            var["start"], var["end"] = var["start"].astype(np.int64), var["end"].astype(np.int64)
    return var


def _embed_destination(out: Path, data: Any, predict: bool) -> Path:
    """The file :func:`multidgd.io.write` writes for ``out``: ``.h5ad`` for an AnnData, else ``.h5mu``."""
    import anndata as ad

    return out.with_suffix(".h5ad" if isinstance(data, ad.AnnData) and not predict else ".h5mu")


def embed_and_write(
    model_path: Path,
    data_path: Path,
    out: Path,
    *,
    predict: bool = False,
    denoise: bool = False,
    threshold: float | str | None = None,
    dense: bool = False,
    prediction: str = "posterior",
    model_out: Path | None = None,
    overwrite: bool = False,
    **infer_kw: Any,
) -> dict[str, Any]:
    """Embed the cells of ``data_path`` into a saved model and write the annotated data.

    The destinations are checked before any inference (:class:`OutputFiles`): not an
    input, not a folder, not an existing file unless ``overwrite``, writable, with room
    for about the input's size (plus the predictions). They are written under temporary
    names and renamed into place at the end, so a failed or interrupted run leaves none.

    Parameters
    ----------
    model_path
        A ``model.pt``.
    data_path
        ``.h5mu`` or ``.h5ad`` of the new cells, raw counts.
    out
        Output file.
    predict
        Add every modality that some cells lack, for all cells, as a modality
        ``<name>_predicted`` of predicted counts.
    denoise
        With ``predict``, add the present modalities too.
    threshold, dense
        How predictions are stored. By default predicted ATAC is sparse, keeping each cell's
        peaks above a flat profile (share >= 1 / number of peaks; ``"uniform"``), and RNA is
        dense. ``threshold``: every prediction sparse, keeping values >= this number (> 0,
        counts) or ``"uniform"``. ``dense``: every prediction dense float32.
    prediction
        How a missing modality is predicted: ``"posterior"`` or ``"point"`` (see
        :meth:`~multidgd.DGD.get_normalized_expression`).
    model_out
        Where a model with learned classes is written (default: next to ``out``).
    overwrite
        Replace existing output files.
    **infer_kw
        Passed to :meth:`~multidgd.DGD.infer`.

    Returns
    -------
    dict
        Summary: cells, modalities present, mean NLL, seconds, outputs.
    """
    from .io import write
    from .prediction import check_prediction

    check_storage(threshold, dense)
    check_prediction(prediction, "--prediction")
    out, data_path = Path(out), Path(data_path)
    outputs = OutputFiles.of({"MODEL": model_path, "DATA": data_path}, overwrite=overwrite)
    outputs.check(out, "--out", plan=False)
    model_out = Path(model_out) if model_out else out.with_name(out.stem + ".model.pt")
    if infer_kw.get("new_classes") == "learn":
        outputs.check(model_out, "--model-out")
    model = load_model_file(model_path)
    data = read_input(data_path)
    final = outputs.check(_embed_destination(out, data, predict), "--out")
    n_features = sum(len(v) for v in model.var_names.values())
    needed = _input_bytes(data_path) + (4 * data.n_obs * n_features if predict else 0) + _MARGIN_BYTES
    with outputs.run(needed):
        t0 = time.perf_counter()
        emb = model.infer(data, **infer_kw)
        seconds = time.perf_counter() - t0
        summary: dict[str, Any] = {
            "data": data_path.name,
            "cells": emb.n_cells,
            "cells_with_rna": int(emb.observed[:, 0].sum()),
            "cells_with_atac": int(emb.observed[:, 1].sum()),
            "absent_features": emb.n_absent_features,
            "mean_nll_rna": _nan_mean(emb.nll["nll_rna"]),
            "mean_nll_atac": _nan_mean(emb.nll["nll_atac"]),
            "seconds": round(seconds, 1),
        }
        if emb.learned_classes:
            model.save(outputs.temporary(model_out), overwrite=True)
            summary["learned_classes"] = emb.learned_classes
            summary["model_out"] = str(model_out)
        if predict:
            data, summary["predicted_modalities"] = _add_predictions(
                data, model, emb, denoise=denoise, threshold=threshold, dense=dense, prediction=prediction
            )
            summary["prediction"] = prediction
            summary["median_prediction_certainty"] = round(float(np.median(emb.prediction_certainty)), 4)
        emb.add_to(data)
        settings = {k: v for k, v in infer_kw.items() if k != "progress_bar"}
        _record_run(data, model, "predict" if predict else "embed", **settings, prediction=prediction)
        write(data, outputs.temporary(final))
        summary["out"] = str(final)
    return summary


# ----------------------------------------------------------------------------- gene2peak


def _tss_stem(out: Path) -> str:
    return out.name.split(".")[0]


def _write_tss_profiles(table, data, mods: dict[str, str], tss: str, out: Path, outputs: OutputFiles):
    """TSS profile table and figure per group next to ``out``; returns (paths, genes with peaks)."""
    from . import analysis

    if not hasattr(data, "mod"):
        raise ValueError("--tss needs a MuData with an ATAC modality for the peak coordinates")
    peaks, rna_var = data.mod[mods["atac"]].var, data.mod[mods["rna"]].var
    groups = table["group"].astype(str).unique()
    stem = _tss_stem(out)
    written = []
    for grp in groups:
        profile = analysis.tss_profile(table, peaks, tss, group=grp, rna_var=rna_var)
        tag = "" if len(groups) == 1 else f"_{grp}".replace(" ", "_").replace("/", "_")
        base = out.with_name(f"{stem}_tss_profile{tag}")
        _write_table(profile, outputs.temporary(base.with_suffix(".csv")))
        title = f"{len(profile.attrs['genes_with_peaks_in_window'])} genes with a peak within 10 kb"
        analysis.plot_tss_profile(profile, outputs.temporary(base.with_suffix(".png")), title=title)
        written += [str(base.with_suffix(".csv")), str(base.with_suffix(".png"))]
    return written, len(profile.attrs["genes_with_peaks_in_window"])


def _check_tss_input(tss, outputs: OutputFiles) -> None:
    """A ``--tss`` that is not the bundled GRCh38 table must be a readable file, never written over."""
    if str(tss).lower() not in ("grch38", "hg38"):
        check_input_file(tss, "--tss", expected="'GRCh38' or a TSS table (.tsv/.csv) or a GTF file")
        outputs.inputs["--tss"] = Path(tss)


def _gene2peak_outputs(out: Path, plot, spearman, tss, outputs: OutputFiles) -> None:
    """Check every destination of gene2peak (and a TSS file given) before any work."""
    outputs.check(out, "--out")
    if plot is not None:
        outputs.check(plot, "--plot")
    if spearman is not None:
        outputs.check(spearman, "--spearman")
    if tss is not None:
        _check_tss_input(tss, outputs)
        outputs.claim(out.parent, f"{_tss_stem(out)}_tss_profile*.csv", "--tss")
        outputs.claim(out.parent, f"{_tss_stem(out)}_tss_profile*.png", "--tss")


def gene2peak_and_write(
    model_path: Path,
    data_path: Path,
    out: Path,
    *,
    genes: list[str],
    plot: Path | None = None,
    spearman: Path | None = None,
    tss: str | None = None,
    groupby: str | None = None,
    modality: str = "atac",
    top_n: int | None = None,
    layer: str | None = None,
    rna_mod: str | None = None,
    atac_mod: str | None = None,
    overwrite: bool = False,
    inputs: dict[str, Any] | None = None,
    **gene2peak_kw: Any,
) -> dict[str, Any]:
    """Silence ``genes`` in silico (:func:`multidgd.analysis.gene2peak`) and write the tables.

    Every destination is checked before any work (:class:`OutputFiles`), written under a
    temporary name and renamed into place at the end.

    Parameters
    ----------
    model_path
        The trained model (``model.pt``) whose decoder is probed.
    data_path
        ``.h5mu`` or ``.h5ad`` with raw counts of the cells to use.
    out
        Output table (``.csv``, ``.csv.gz`` or ``.tsv``).
    genes
        Genes to silence.
    plot
        PNG of the top peaks of each gene.
    spearman
        Also write the Spearman baseline table here.
    tss
        ``"GRCh38"`` (bundled) or a TSS TSV/GTF: also write the TSS profile next to ``out``
        (a ``.csv`` and a ``.png`` per group).
    groupby, modality, top_n, layer, rna_mod, atac_mod
        As for :func:`multidgd.analysis.gene2peak`, also used by the Spearman baseline.
    overwrite
        Replace existing outputs (and remove TSS profiles of an earlier run not written again).
    inputs
        Further input files (command-line name -> path), never written over.
    **gene2peak_kw
        Further arguments of :func:`multidgd.analysis.gene2peak` (``n_steps``, ``lr``,
        ``step_size``, ``scale``, ``min_cells``, ``device``, ``progress_bar``).

    Returns
    -------
    dict
        Summary: genes, skipped genes, rows, groups, outputs.
    """
    from . import analysis

    out = Path(out)
    outputs = OutputFiles.of({"MODEL": model_path, "DATA": data_path, **(inputs or {})}, overwrite=overwrite)
    _gene2peak_outputs(out, plot, spearman, tss, outputs)
    model = load_model_file(model_path)
    data = read_input(data_path)
    shared = {"groupby": groupby, "modality": modality, "top_n": top_n, "layer": layer}
    with outputs.run(_MARGIN_BYTES):
        table = analysis.gene2peak(
            model, data, genes=genes, rna_mod=rna_mod, atac_mod=atac_mod, **shared, **gene2peak_kw
        )
        mods = model.modality_names(rna_mod, atac_mod)
        _write_table(table, outputs.temporary(out))
        written = [str(out)]
        if plot is not None:
            analysis.plot_gene2peak(table, outputs.temporary(Path(plot)))
            written.append(str(plot))
        if spearman is not None:
            tested = table["gene"].astype(str).unique().tolist()
            baseline = analysis.spearman_gene2peak(
                data, genes=tested, rna_mod=mods["rna"], atac_mod=mods["atac"], **shared
            )
            _write_table(baseline, outputs.temporary(Path(spearman)))
            written.append(str(spearman))
        summary = {
            "genes": int(table["gene"].nunique()),
            "skipped_genes": sorted(set(genes) - set(table["gene"].astype(str))),
            "rows": len(table),
            "groups": int(table["group"].nunique()),
        }
        if tss is not None:
            paths, summary["tss_genes_with_peaks"] = _write_tss_profiles(table, data, mods, tss, out, outputs)
            written += paths
        summary["outputs"] = written
    return summary


def links_and_write(
    model_path: Path | None,
    data_path: Path,
    out: Path,
    *,
    genes: list[str],
    method: str = "hybrid",
    plot: Path | None = None,
    tss: str | None = None,
    overwrite: bool = False,
    inputs: dict[str, Any] | None = None,
    **link_kw: Any,
) -> dict[str, Any]:
    """Score gene–peak links (:func:`multidgd.analysis.link_peaks`) and write the table.

    Every destination is checked before any work; files are written under temporary names
    and renamed into place at the end.

    Parameters
    ----------
    model_path
        The trained model (``model.pt``); None for the baselines ``spearman`` and ``linkpeaks``.
    data_path
        ``.h5mu`` or ``.h5ad`` with raw counts of the cells to use.
    out
        Output table (``.csv``, ``.csv.gz`` or ``.tsv``).
    genes
        Genes to link.
    method
        One of :data:`multidgd.analysis.LINK_METHODS`.
    plot
        PNG of the top peaks of each gene.
    tss
        ``"GRCh38"`` (bundled) or a TSS TSV/GTF: peaks within ``window`` bp of the gene's TSS.
    overwrite
        Replace existing outputs.
    inputs
        Further input files (command-line name -> path), never written over.
    **link_kw
        Further arguments of :func:`multidgd.analysis.link_peaks` (``window``, ``top_n``, ...).

    Returns
    -------
    dict
        Summary: method, genes, rows, cells, genes without a TSS, seconds, outputs.
    """
    from . import analysis

    out = Path(out)
    files = {"DATA": data_path, **(inputs or {})}
    if model_path is not None:
        files["MODEL"] = model_path
    outputs = OutputFiles.of(files, overwrite=overwrite)
    outputs.check(out, "--out")
    if plot is not None:
        outputs.check(plot, "--plot")
    if tss is not None:
        _check_tss_input(tss, outputs)
    model = load_model_file(model_path) if model_path is not None else None
    data = read_input(data_path)
    with outputs.run(_MARGIN_BYTES):
        t0 = time.perf_counter()
        table = analysis.link_peaks(model, data, genes=genes, method=method, tss=tss, **link_kw)
        seconds = time.perf_counter() - t0
        _write_table(table, outputs.temporary(out))
        written = [str(out)]
        if plot is not None:
            analysis.plot_gene2peak(table, outputs.temporary(Path(plot)), score="score")
            written.append(str(plot))
    return {
        "method": method,
        "genes": int(table["gene"].nunique()),
        "rows": len(table),
        "cells": int(table.attrs["n_cells"]),
        "genes_without_tss": table.attrs["genes_without_tss"],
        "seconds": round(seconds, 1),
        "outputs": written,
    }


def differential_and_write(
    model_path: Path,
    data_path: Path,
    out: Path,
    *,
    plot: Path | None = None,
    overwrite: bool = False,
    **differential_kw: Any,
) -> dict[str, Any]:
    """Test genes or peaks between groups (:func:`multidgd.analysis.differential_test`) and write the table.

    Every destination is checked before any work; files are written under temporary names
    and renamed into place at the end.

    Parameters
    ----------
    model_path
        The trained model (``model.pt``).
    data_path
        ``.h5mu`` or ``.h5ad`` with raw counts and the ``groupby`` column.
    out
        Output table (``.csv``, ``.csv.gz`` or ``.tsv``), one row per feature and comparison,
        the feature in column ``feature``.
    plot
        PNG of fold change against level per comparison (:func:`~multidgd.analysis.plot_differential`).
    overwrite
        Replace existing outputs.
    **differential_kw
        Arguments of :func:`multidgd.analysis.differential_test` (``groupby``, ``group1``,
        ``group2``, ``modality``, ``delta``, ...).

    Returns
    -------
    dict
        Summary: modality, comparisons with the cells and calls of each, outputs.
    """
    from . import analysis

    out = Path(out)
    outputs = OutputFiles.of({"MODEL": model_path, "DATA": data_path}, overwrite=overwrite)
    outputs.check(out, "--out")
    if plot is not None:
        outputs.check(plot, "--plot")
    model = load_model_file(model_path)
    data = read_input(data_path)
    with outputs.run(_MARGIN_BYTES):
        table = analysis.differential_test(model, data, **differential_kw)
        _write_table(table.reset_index(), outputs.temporary(out))
        written = [str(out)]
        if plot is not None:
            analysis.plot_differential(table, outputs.temporary(Path(plot)))
            written.append(str(plot))
    calls = table.groupby("comparison", sort=False)["is_de_fdr"].sum()
    return {
        "modality": table.attrs["modality"],
        "features": int(len(table) // max(len(calls), 1)),
        "batch_correction": table.attrs["batch_correction"],
        "cells_per_group": table.attrs["n_cells"],
        f"called_at_fdr_{table.attrs['fdr']:g}": {k: int(v) for k, v in calls.items()},
        "outputs": written,
    }


# ----------------------------------------------------------------------------- evaluate


def _read_split(path, data) -> np.ndarray:
    """Split labels from ``--split-csv`` (:func:`multidgd.evaluation.read_split_csv`), refused naming the file."""
    import pandas as pd

    from .evaluation import read_split_csv

    path = check_input_file(path, "--split-csv", expected="a CSV file with columns obs_name,split")
    try:
        return read_split_csv(path, pd.Index(data.obs_names.astype(str)))
    except (ValueError, OSError) as err:
        if isinstance(err, ValueError) and str(path) in str(err):
            raise
        raise ValueError(f"--split-csv {path}: cannot be read as a CSV of obs_name,split ({_reason(err)})") from err


def _evaluation_bytes(data: Any, n_covariates: int) -> int:
    """Room for the model file and the figures of an evaluation (:func:`estimate_model_bytes`)."""
    from .config import ModelConfig

    mods = getattr(data, "mod", None)
    n_features = {k: a.n_vars for k, a in mods.items()} if mods is not None else {"all": data.n_vars}
    return estimate_model_bytes(data.n_obs, n_features, ModelConfig(), n_covariates)[0] + _MARGIN_BYTES


def evaluate_and_write(
    data_path: Path,
    out: Path,
    *,
    split_csv: Path | None = None,
    model_path: Path | None = None,
    overwrite: bool = False,
    **evaluation_kw: Any,
) -> dict[str, Any]:
    """Check the inputs and ``out``, then run :func:`multidgd.evaluation.run_evaluation`.

    ``out`` is checked like a training folder (:class:`OutputFolder`: an earlier run needs
    ``overwrite``; writable; room for a model file). The evaluation writes into a hidden
    folder inside ``out`` whose files are moved in when it ends: a failed or interrupted
    evaluation leaves no partial output, and an earlier run stays as it was.

    Parameters
    ----------
    data_path
        ``.h5mu`` or ``.h5ad`` with raw counts.
    out
        Output directory.
    split_csv
        CSV with columns ``obs_name,split`` (None: the seeded stratified split).
    model_path
        Evaluate this ``model.pt`` instead of training one.
    overwrite
        Replace an earlier run in ``out`` (files not written again are removed).
    **evaluation_kw
        Further arguments of :func:`~multidgd.evaluation.run_evaluation`.

    Returns
    -------
    dict
        The metrics, as written to ``metrics.json``.
    """
    from .evaluation import run_evaluation

    out, data_path = Path(out), Path(data_path)
    inputs = {"DATA": data_path, "--model": model_path, "--split-csv": split_csv}
    writes = ("metrics.json", "report.md") + (() if model_path is not None else ("model.pt",))
    folder = OutputFolder.check(out, overwrite=overwrite, inputs=inputs, writes=writes)
    if model_path is not None:
        load_model_file(model_path, what="--model")  # refused before the data is read
    data = read_input(data_path)
    split = None if split_csv is None else _read_split(split_csv, data)
    needed = _evaluation_bytes(data, 1 if evaluation_kw.get("batch_key") else 0)
    with folder.run(needed), folder.staged() as stage:
        metrics = run_evaluation(
            data, stage, split=split, model_path=model_path, source=data_path.name, **evaluation_kw
        )
    folder.finish()
    return metrics
