"""The ``multidgd`` command line: argument parsing and printing.

Each command calls one library function and prints what it returns: ``demo`` and
``train`` :func:`multidgd.workflows.train_and_report`, ``embed`` and ``predict``
:func:`multidgd.workflows.embed_and_write`, ``gene2peak``
:func:`multidgd.workflows.gene2peak_and_write`, ``links``
:func:`multidgd.workflows.links_and_write`, ``differential``
:func:`multidgd.workflows.differential_and_write`, ``evaluate``
:func:`multidgd.workflows.evaluate_and_write`. A user error (bad data, option, file or
destination) ends the command with one line ``multidgd: error: ...`` on stderr and exit
status 2, with the library's Python argument names replaced by the command-line options
(:data:`CLI_OPTIONS`); Ctrl-C ends it with one line and exit status 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import PRECISIONS
from .io import mudata_options

__all__ = [
    "main",
    "build_parser",
    "cli_message",
    "cli_text",
    "CLI_OPTIONS",
    "CLI_PHRASES",
    "GENE2PEAK_TOP_N",
    "USER_ERRORS",
]

logger = logging.getLogger("multidgd")

#: Exceptions every command reports as an input error (exit status 2).
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, OSError, TypeError)

#: Library messages name Python arguments; the command line names its options instead.
#: Python name -> option, replaced where a message writes ``name=value`` or ``name=...``,
#: as a word of its own when the name holds an underscore (``batch_size``), and at the
#: start of a message (``lr must be ...``, ``genes is empty``, ``groupby: ...``).
CLI_OPTIONS: dict[str, str] = {
    "batch_size": "--batch-size",
    "max_epochs": "--max-epochs",
    "seed": "--seed",
    "precision": "--precision",
    "device": "--device",
    "rna_mod": "--rna-mod",
    "atac_mod": "--atac-mod",
    "layer": "--layer",
    "covariate_keys": "--covariate-keys",
    "cell_type_key": "--cell-type-key",
    "n_components": "--n-components",
    "backed": "--backed",
    "new_classes": "--new-classes",
    "covariate_start": "--covariate-start",
    "start": "--start",
    "n_steps": "--steps",
    "lr": "--lr",
    "step_size": "--step-size",
    "min_cells": "--min-cells",
    "top_n": "--top-n",
    "genes": "--genes",
    "groupby": "--groupby",
    "holdout_batch": "--holdout-batch",
    "batch_key": "--batch-key",
    "train_fraction": "--train-fraction",
    "compare_max_epochs": "--compare-max-epochs",
    "group1": "--group1",
    "group2": "--group2",
    "delta": "--delta",
    "fdr": "--fdr",
    "batch_correction": "--batch-correction",
    "n_cells": "--n-cells",
    "n_bootstrap": "--n-bootstrap",
}

#: Features kept per gene and group by ``gene2peak`` unless ``--top-n``/``--all-features``.
GENE2PEAK_TOP_N = 100

#: Advice naming Python calls, or settings the command line does not have, rephrased
#: (exact text, replaced before :data:`CLI_OPTIONS`).
CLI_PHRASES: dict[str, str] = {
    "pass TrainConfig(batch_size=...) no larger than the number of cells": (
        "give --batch-size no larger than the number of cells"
    ),
    "lower batch_size or validation_fraction": "lower --batch-size (10% of the cells are held out for validation)",
    "rna_mod=/atac_mod= (CLI: --rna-mod/--atac-mod)": "--rna-mod/--atac-mod",
    "rna_mod=/atac_mod=": "--rna-mod/--atac-mod",
    " (min_feature_fraction)": "",
    "remove it or point checkpoint_path elsewhere": (
        "start afresh with --overwrite instead of --resume, or choose another --out"
    ),
    "was written with another ModelConfig": (
        "was written with other model settings (a ModelConfig from Python); start afresh with --overwrite "
        "instead of --resume, or choose another --out"
    ),
    "Drop backed or the layer": "Drop --backed or --layer",
    "pass top_n= or features=, or fewer genes": "pass --top-n, or fewer --genes",
    " or None, got": ", got",
    "batch_correction must be True, False or one of": "batch_correction must be one of",
    "group2 must be one group (or None for the rest)": "group2 must be one group (or left out for the rest)",
}

_NOT_OPTION = r"(?<![\w\-/.])"  # not inside a word, an option or a path


def cli_text(text: str) -> str:
    """Rephrase a library message for the command line (:data:`CLI_PHRASES`, :data:`CLI_OPTIONS`).

    Parameters
    ----------
    text
        The message.

    Returns
    -------
    str
        The message naming command-line options.
    """
    for old, new in CLI_PHRASES.items():
        text = text.replace(old, new)
    for name, option in CLI_OPTIONS.items():
        text = re.sub(rf"{_NOT_OPTION}{name}=\.\.\.", option, text)
        text = re.sub(rf"{_NOT_OPTION}{name}=", f"{option} ", text)
        if "_" in name:
            text = re.sub(rf"{_NOT_OPTION}{name}(?![\w/.])", option, text)
        else:
            text = re.sub(rf"^{name}(?=:| must | is | repeat| ')", option, text)
    return text


def _setting_message(err: Any) -> str:
    """A resumed run's option that differs from its checkpoint's, in command-line terms."""
    option = CLI_OPTIONS.get(err.setting)
    if option is None:
        return cli_text(str(err))
    if err.setting == "max_epochs":
        return (
            f"--max-epochs {err.given} is below the {err.stored} epochs the checkpoint in --out has trained; "
            f"give --max-epochs {err.stored} or more to continue (more extends the run)"
        )
    return (
        f"{option} {err.given} differs from the checkpoint's {option} {err.stored}; leave {option} out (or give "
        f"{err.stored}) to continue the run, or start afresh with --overwrite instead of --resume"
    )


def cli_message(err: BaseException) -> str:
    """The one-line message a command prints for a user error.

    A :class:`~multidgd.checkpoint.SettingMismatch` names the option and both values; an
    OSError its file and reason; others their text (never blank), through :func:`cli_text`.

    Parameters
    ----------
    err
        The exception.

    Returns
    -------
    str
    """
    checkpoint = sys.modules.get("multidgd.checkpoint")  # only a loaded one can have raised it
    mismatch = getattr(checkpoint, "SettingMismatch", None)
    if mismatch is not None and isinstance(err, mismatch):
        return _setting_message(err)
    if isinstance(err, OSError) and err.strerror and err.filename:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = " ".join(str(err).split()) or type(err).__name__
        if isinstance(err, KeyError):
            text = f"{text} not found"
    return cli_text(text)


def _train_summary_text(summary: dict[str, Any], out: Path) -> str:
    lines = [
        f"multidgd: trained on {summary['data']} "
        f"({summary['cells_trained']} training + {summary['cells_validation']} validation cells, "
        f"{summary['genes']} genes, {summary['peaks']} peaks)",
        f"  epochs: {summary['epochs']} (best {summary['best_epoch']}"
        f"{', early stop' if summary['stopped_early'] else ''}), "
        f"{summary['seconds_per_epoch']} s/epoch, total {summary['seconds']} s",
        f"  per-cell NLL at best epoch: train RNA {summary['train_nll_rna']:.2f}, ATAC {summary['train_nll_atac']:.2f}",
    ]
    if "val_nll_rna" in summary:
        pad = " " * len("  per-cell NLL at best epoch: ")
        lines.append(f"{pad}validation RNA {summary['val_nll_rna']:.2f}, ATAC {summary['val_nll_atac']:.2f}")
    if "cells_by_kind" in summary:
        kinds = summary["cells_by_kind"]
        lines.append(
            f"  mosaic: {kinds['paired']} paired, {kinds['rna_only']} RNA-only and {kinds['atac_only']} "
            "ATAC-only cells (NLL means over the cells that have each modality)"
        )
    lines.append(
        f"  mixture components used (>= 1% of training cells): {summary['components_used']} of "
        f"{summary['components']}; cells per component: {summary['cluster_sizes']}"
    )
    if "components_chosen" in summary:
        lines.append(f"  {summary['components_chosen']}")
    if "ari_clusters_vs_cell_type" in summary:
        lines.append(f"  ARI clusters vs cell types (training cells): {summary['ari_clusters_vs_cell_type']:.3f}")
    lines.append(f"  outputs in {out}: {', '.join(summary['outputs'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- parser


class _HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help when it has a default and the help names none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        no_default = default is None or default is False or default is argparse.SUPPRESS or default == []
        if "default" in text or no_default or not action.option_strings:
            return text
        return f"{text} (default: {default})"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit status 2)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--quiet``, taken by every command."""
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to compute: auto = CUDA if available"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:  # noqa: A002 - argparse's name
    """A subcommand whose own --help opens with its one-line help."""
    return sub.add_parser(name, help=help, description=help)


def _add_source_options(p: argparse.ArgumentParser) -> None:
    """``--rna-mod``, ``--atac-mod`` and ``--layer`` of commands reading data for a trained model."""
    p.add_argument("--rna-mod", default=None, help="name of the RNA modality (default: the one used in training)")
    p.add_argument("--atac-mod", default=None, help="name of the ATAC modality (default: the one used in training)")
    p.add_argument("--layer", default=None, help="layer with raw counts (default X)")


def _threshold(text: str) -> float | str:
    """``--threshold``: a number, or ``uniform``."""
    if text == "uniform":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number > 0 or 'uniform', got {text!r}") from None


def _add_storage_options(p, when: str) -> None:
    """``--threshold`` / ``--dense``: how predicted counts are stored."""
    p.add_argument(
        "--threshold",
        type=_threshold,
        default=None,
        metavar="T",
        help=f"{when}store every predicted modality sparse, keeping values >= T (predicted counts), "
        "or with 'uniform' the features above a flat profile (default: predicted ATAC sparse with "
        "'uniform', predicted RNA dense)",
    )
    p.add_argument("--dense", action="store_true", help=f"{when}store every predicted modality dense")


def _add_overwrite_option(p, what: str) -> None:
    p.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def _add_train_options(p: argparse.ArgumentParser, *, default_epochs: int) -> None:
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument(
        "--max-epochs", type=int, default=default_epochs, help="upper bound on epochs (early stopping may end sooner)"
    )
    p.add_argument("--seed", type=int, default=None, help="default 0; when resuming, the checkpoint's")
    earlier = p.add_mutually_exclusive_group()
    earlier.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    _add_overwrite_option(earlier, "an earlier run in OUT (its files not written again are removed)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="cells per minibatch (default 128; resuming: the checkpoint's)"
    )
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default=None,
        help="float32 (default; resuming: the checkpoint's) or bfloat16: the decoder's matmuls in "
        "bfloat16 (GPUs, CPUs with bf16 support)",
    )
    _add_runtime_options(p)


def _add_train_parsers(sub) -> None:
    demo = _command(sub, "demo", help="train on the bundled SNARE-seq demo data")
    _add_train_options(demo, default_epochs=1000)
    train = _command(sub, "train", help="train on a .h5mu or .h5ad file")
    train.add_argument("data", type=Path, help=".h5mu (MuData), .h5ad (AnnData with var['feature_types']) or .zarr")
    train.add_argument("--rna-mod", default="rna", help="name of the RNA modality in a MuData")
    train.add_argument("--atac-mod", default="atac", help="name of the ATAC modality in a MuData")
    train.add_argument("--layer", default=None, help="layer with raw counts (default X)")
    train.add_argument(
        "--cell-type-key",
        default=None,
        help="obs column of cell types: sets K (unless --n-components) and stratifies the validation split",
    )
    train.add_argument(
        "--n-components",
        type=int,
        default=None,
        help="basal mixture components K (default: the cell types' number, else chosen from the data by Leiden)",
    )
    train.add_argument(
        "--covariate-keys", nargs="*", default=[], help="obs columns of batch-like covariates (default none)"
    )
    train.add_argument(
        "--rna-only",
        type=Path,
        default=None,
        help="also an .h5ad of cells with RNA only (genes): mosaic training with DATA's paired cells "
        "(obs column modality_source marks each cell's kind)",
    )
    train.add_argument("--atac-only", type=Path, default=None, help="also an .h5ad of cells with ATAC only (peaks)")
    train.add_argument(
        "--predict-missing",
        action="store_true",
        help="a mosaic: also write the predicted counts of the modality each single-modality cell lacks "
        "(modalities <rna>_predicted / <atac>_predicted; obs multidgd_prediction_certainty is always written)",
    )
    _add_storage_options(train, "with --predict-missing: ")
    train.add_argument(
        "--backed",
        action="store_true",
        help="leave the counts on disk and read rows per minibatch (X stored as CSR); "
        "results go to DIR/multidgd_results.h5ad",
    )
    _add_train_options(train, default_epochs=1000)


def _add_evaluate_parser(sub) -> None:
    ev = _command(sub, "evaluate", help="train on a split, embed the test cells and report the paper's metrics")
    ev.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts")
    ev.add_argument("--out", type=Path, required=True, help="output directory")
    ev.add_argument("--cell-type-key", required=True, help="obs column of cell types (stratifies the split; ARI)")
    ev.add_argument("--batch-key", default=None, help="obs column of batches (the covariate)")
    ev.add_argument("--split-csv", type=Path, default=None, help="CSV with columns obs_name,split")
    ev.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    ev.add_argument("--max-epochs", type=int, default=1000, help="upper bound on training epochs")
    ev.add_argument("--holdout-batch", default=None, help="also train without this batch; report loss ratios")
    ev.add_argument(
        "--train-fraction",
        type=float,
        nargs="+",
        default=None,
        help="also train on these fractions of the training cells (e.g. 0.1 0.25 0.5 1); test NLL ratios",
    )
    ev.add_argument(
        "--compare",
        choices=["multivi"],
        action="append",
        default=None,
        help='also train MultiVI on the same split (needs pip install "multidgd[compare]")',
    )
    ev.add_argument(
        "--model", type=Path, default=None, help="evaluate this model.pt (trained on DATA with the same split)"
    )
    ev.add_argument("--compare-max-epochs", type=int, default=None, help="cap MultiVI's epochs (default: its own)")
    ev.add_argument(
        "--scib",
        action="store_true",
        help="also report scIB metrics of multidgd's, MultiVI's and a plain PCA latent "
        '(needs --batch-key and pip install "multidgd[scib]")',
    )
    _add_overwrite_option(ev, "an earlier run in OUT (its files not written again are removed)")
    _add_runtime_options(ev)


def _add_embed_parsers(sub) -> None:
    for name, text in (
        ("embed", "place new cells into a trained model (no retraining)"),
        ("predict", "embed new cells and predict the modality they lack"),
    ):
        q = _command(sub, name, help=text)
        q.add_argument("model", type=Path, help="model file written by train (model.pt)")
        q.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts")
        q.add_argument("--out", type=Path, required=True, help="output .h5mu (or .h5ad for embed of an AnnData)")
        q.add_argument(
            "--new-classes",
            choices=["naive", "learn"],
            default="naive",
            help="unseen covariate labels: inferred under the known classes, or learned as new classes",
        )
        q.add_argument(
            "--covariate-start",
            choices=["search", "label"],
            default="search",
            help="start from the best (component, class) pair, or at the class of the cell's label",
        )
        q.add_argument(
            "--start",
            choices=["auto", "encoder", "search"],
            default="auto",
            help="where representations start: the model's start encoder, or the best candidate pair "
            "(auto: the encoder when the model has one)",
        )
        q.add_argument(
            "--steps",
            type=int,
            default=None,
            help="representation steps after the start (default: 3 after the encoder, 50 after the search)",
        )
        _add_source_options(q)
        q.add_argument("--rna-library-key", default=None, help="obs column with RNA library sizes")
        q.add_argument("--atac-library-key", default=None, help="obs column with ATAC library sizes")
        q.add_argument("--model-out", type=Path, default=None, help="where a model with learned classes is written")
        q.add_argument(
            "--temperature",
            type=float,
            default=None,
            help="temperature of the posterior weights that predict a missing modality "
            "(default: by what each cell has; see multidgd.prediction)",
        )
        _add_overwrite_option(q, "existing output files")
        _add_runtime_options(q)
        if name == "predict":
            q.add_argument("--denoise", action="store_true", help="also write decoded present modalities")
            _add_storage_options(q, "")
            q.add_argument(
                "--prediction",
                choices=["posterior", "point"],
                default="posterior",
                help="a missing modality as the posterior-weighted mean of the best-start candidates' "
                "profiles (default), or decoded from the cell's own representation",
            )


def _add_gene2peak_parser(sub) -> None:
    g = _command(sub, "gene2peak", help="peaks (or genes) that change when a gene is silenced in silico")
    g.add_argument("model", type=Path, help="model file written by train (model.pt)")
    g.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts of the cells to use")
    g.add_argument("--genes", nargs="+", required=True, help="genes to silence, or @FILE with one gene per line")
    g.add_argument("--out", type=Path, required=True, help="output table (.csv, .csv.gz or .tsv)")
    g.add_argument("--groupby", default=None, help="obs column (e.g. cell type): one row per group")
    g.add_argument("--plot", type=Path, default=None, help="PNG of the top peaks of each gene")
    g.add_argument("--modality", choices=["atac", "rna"], default="atac", help="features reported")
    g.add_argument("--steps", type=int, default=1, help="Adam steps on the silenced gene's loss (default 1)")
    g.add_argument("--lr", type=float, default=1e-2, help="learning rate of those steps (default 0.01)")
    g.add_argument("--step-size", type=float, default=None, help="instead: steps of this length along the gradient")
    g.add_argument("--scale", choices=["fraction", "counts"], default="fraction", help="ΔX̂ as fractions or as counts")
    g.add_argument(
        "--top-n",
        type=int,
        default=None,
        help=f"keep the top N features per gene and group (default {GENE2PEAK_TOP_N}; --all-features, --tss: all)",
    )
    g.add_argument("--all-features", action="store_true", help="keep every feature per gene and group")
    g.add_argument("--min-cells", type=int, default=1, help="skip genes expressed in fewer cells")
    g.add_argument("--spearman", type=Path, default=None, help="also write the Spearman baseline table here")
    g.add_argument(
        "--tss",
        default=None,
        help="'GRCh38' (bundled) or a TSS TSV/GTF: also write the TSS profile next to --out (.csv and .png)",
    )
    _add_source_options(g)
    _add_overwrite_option(g, "existing output files")
    _add_runtime_options(g)


def _add_links_parser(sub) -> None:
    from .analysis.links import LINK_METHODS

    k = _command(sub, "links", help="gene–peak links: model-based scores and the correlation baselines")
    k.add_argument("model", help="model file written by train (model.pt); 'none' for spearman / linkpeaks")
    k.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts of the cells to use")
    k.add_argument("--genes", nargs="+", required=True, help="genes to link, or @FILE with one gene per line")
    k.add_argument("--out", type=Path, required=True, help="output table (.csv, .csv.gz or .tsv)")
    k.add_argument(
        "--method",
        choices=list(LINK_METHODS),
        default="hybrid",
        help="score (default hybrid: Spearman of the counts plus the decoded profiles' correlation)",
    )
    k.add_argument("--plot", type=Path, default=None, help="PNG of the top peaks of each gene")
    k.add_argument(
        "--tss", default=None, help="'GRCh38' (bundled) or a TSS TSV/GTF: only peaks within --window of the TSS"
    )
    k.add_argument("--window", type=int, default=500_000, help="half-width of the cis window in bp (default 500000)")
    k.add_argument("--top-n", type=int, default=None, help=f"keep the top N peaks per gene (default {GENE2PEAK_TOP_N})")
    k.add_argument("--all-features", action="store_true", help="keep every peak per gene")
    k.add_argument("--background", type=int, default=200, help="background peaks per peak of linkpeaks (default 200)")
    k.add_argument("--seed", type=int, default=0, help="seed of the background draw (default 0)")
    _add_source_options(k)
    _add_overwrite_option(k, "existing output files")
    _add_runtime_options(k)


def _add_differential_parser(sub) -> None:
    d = _command(
        sub,
        "differential",
        help="genes or peaks that differ between groups of cells, from the decoded batch-corrected profiles",
    )
    d.add_argument("model", type=Path, help="model file written by train (model.pt)")
    d.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts and the --groupby column")
    d.add_argument("--groupby", required=True, help="obs column of the groups (e.g. cell type or cluster)")
    d.add_argument("--group1", nargs="+", default=None, help="group(s), each tested in turn (default: every group)")
    d.add_argument("--group2", default=None, help="the group compared against (default: all other cells)")
    d.add_argument("--modality", choices=["rna", "atac"], default="rna", help="genes (default) or peaks")
    d.add_argument("--out", type=Path, required=True, help="output table (.csv, .csv.gz or .tsv)")
    d.add_argument("--plot", type=Path, default=None, help="PNG: fold change against level per comparison")
    d.add_argument("--delta", type=float, default=0.25, help="smallest |log2 fold change| that counts (default 0.25)")
    d.add_argument("--fdr", type=float, default=0.05, help="expected false discovery proportion (default 0.05)")
    d.add_argument(
        "--batch-correction",
        choices=["both", "covariate", "within", "none"],
        default="both",
        help="decode at the covariates' class means and/or compare within batches (default both)",
    )
    d.add_argument("--n-cells", type=int, default=1000, help="most cells decoded per group and batch (default 1000)")
    d.add_argument("--n-bootstrap", type=int, default=200, help="resamples of the cells (default 200)")
    d.add_argument("--seed", type=int, default=0, help="seed of the cells drawn and resampled (default 0)")
    _add_source_options(d)
    _add_overwrite_option(d, "existing output files")
    _add_runtime_options(d)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``multidgd`` command.

    Returns
    -------
    argparse.ArgumentParser
        With the subcommands ``demo``, ``train``, ``evaluate``, ``embed``, ``predict``,
        ``gene2peak`` and ``differential``.
    """
    from . import __version__

    parser = _Parser(prog="multidgd", description="multiDGD for paired RNA + ATAC counts")
    parser.add_argument("--version", action="version", version=f"multidgd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train_parsers(sub)
    _add_evaluate_parser(sub)
    _add_embed_parsers(sub)
    _add_gene2peak_parser(sub)
    _add_links_parser(sub)
    _add_differential_parser(sub)
    return parser


# ----------------------------------------------------------------------------- commands


def _train_out(args: argparse.Namespace) -> Path:
    if args.command == "demo":
        return args.out or Path("multidgd_demo")
    return args.out or Path(f"multidgd_{Path(args.data).stem}")


def _train(args: argparse.Namespace) -> str | None:
    from .datasets import demo_path
    from .workflows import OutputFolder, read_input, train_and_report

    if args.command == "demo":
        path = demo_path()
        inputs = {"the demo data": path}
        kw = {"cell_type_key": "cell_type", "covariate_keys": ["sample"]}
    else:
        path = args.data
        inputs = {"DATA": path}
        kw = {
            "rna_mod": args.rna_mod,
            "atac_mod": args.atac_mod,
            "layer": args.layer,
            "cell_type_key": args.cell_type_key,
            "covariate_keys": args.covariate_keys,
            "n_components": args.n_components,
            "predict_missing": args.predict_missing,
            "threshold": args.threshold,
            "dense": args.dense,
        }
    for option in ("threshold", "dense"):
        if getattr(args, option, None) not in (None, False) and not args.predict_missing:
            raise ValueError(f"--{option} goes with --predict-missing")
    singles = {k: getattr(args, k, None) for k in ("rna_only", "atac_only")}
    singles = {k: v for k, v in singles.items() if v is not None}
    if singles and args.backed:
        raise ValueError("--rna-only / --atac-only are read into memory; drop --backed")
    inputs.update({f"--{k.replace('_', '-')}": v for k, v in singles.items()})
    out = _train_out(args)
    OutputFolder.check(out, overwrite=args.overwrite, resume=args.resume, inputs=inputs)  # before reading the data
    data = read_input(path, backed=getattr(args, "backed", False))
    if singles:
        from .mosaic import combine_mosaic

        extra = {k.split("_")[0]: read_input(v, what=f"--{k.replace('_', '-')}") for k, v in singles.items()}
        data = combine_mosaic(data, **extra, rna_mod=args.rna_mod, atac_mod=args.atac_mod)
    summary = train_and_report(
        data,
        out,
        source=Path(path).name,
        max_epochs=args.max_epochs,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
        batch_size=args.batch_size,
        precision=args.precision,
        progress_bar=not args.quiet,
        overwrite=args.overwrite,
        inputs=inputs,
        **kw,
    )
    return _train_summary_text(summary, out) if summary else None


def _evaluate(args: argparse.Namespace) -> str:
    from .evaluation import require_scvi
    from .workflows import evaluate_and_write

    if args.max_epochs < 1:
        raise ValueError(f"--max-epochs must be >= 1, got {args.max_epochs}")
    if args.compare:
        require_scvi()
    metrics = evaluate_and_write(
        args.data,
        args.out,
        split_csv=args.split_csv,
        model_path=args.model,
        overwrite=args.overwrite,
        cell_type_key=args.cell_type_key,
        batch_key=args.batch_key,
        seed=args.seed,
        max_epochs=args.max_epochs,
        holdout_batch=args.holdout_batch,
        train_fraction=args.train_fraction,
        compare=args.compare or [],
        compare_max_epochs=args.compare_max_epochs,
        scib=args.scib,
        device=args.device,
        progress_bar=not args.quiet,
    )
    return json.dumps(metrics, indent=2)


def _embed(args: argparse.Namespace) -> str:
    from .workflows import embed_and_write

    kw = {
        "predict": args.command == "predict",
        "model_out": args.model_out,
        "overwrite": args.overwrite,
        "new_classes": args.new_classes,
        "covariate_start": args.covariate_start,
        "start": args.start,
        "n_steps": args.steps,
        "rna_mod": args.rna_mod,
        "atac_mod": args.atac_mod,
        "layer": args.layer,
        "rna_library_key": args.rna_library_key,
        "atac_library_key": args.atac_library_key,
        "temperature": args.temperature,
        "device": args.device,
        "progress_bar": not args.quiet,
    }
    if args.command == "predict":
        kw.update(denoise=args.denoise, threshold=args.threshold, dense=args.dense, prediction=args.prediction)
    return json.dumps(embed_and_write(args.model, args.data, args.out, **kw), indent=2)


def _gene_list(values: list[str]) -> tuple[list[str], dict[str, Path]]:
    """The genes of ``--genes`` (names, or @FILE with one per line) and the files read."""
    from .workflows import check_input_file

    genes, files = [], {}
    for v in values:
        if v.startswith("@"):
            path = check_input_file(v[1:], "--genes", expected="a text file with one gene per line (@FILE)")
            try:
                text = path.read_text()
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"--genes {path}: cannot be read as text ({err})") from err
            genes += [line.strip() for line in text.splitlines() if line.strip()]
            files[f"--genes {v}"] = path
        else:
            genes.append(v)
    return genes, files


def _check_table_out(out: Path) -> None:
    """Refuse an ``--out`` table whose suffix is not .csv, .csv.gz or .tsv."""
    if out.suffix not in (".csv", ".tsv", ".gz"):
        raise ValueError(f"--out must end in .csv, .csv.gz or .tsv, got {out.name}")


def _top_n(args: argparse.Namespace, keep_all: bool = False) -> int | None:
    """Features kept per gene from ``--top-n`` / ``--all-features`` (None: all; ``keep_all``: all unless --top-n)."""
    if args.all_features and args.top_n is not None:
        raise ValueError("--top-n and --all-features exclude each other")
    if args.top_n is not None:
        return args.top_n
    return None if args.all_features or keep_all else GENE2PEAK_TOP_N


def _gene2peak(args: argparse.Namespace) -> str:
    from .workflows import gene2peak_and_write

    _check_table_out(args.out)
    if args.tss is not None and args.modality != "atac":
        raise ValueError("--tss needs --modality atac (a profile of peaks)")
    top_n = _top_n(args, keep_all=args.tss is not None)
    if args.tss is not None and args.top_n is not None:
        raise ValueError("--tss needs every peak per gene: leave out --top-n")
    genes, files = _gene_list(args.genes)
    summary = gene2peak_and_write(
        args.model,
        args.data,
        args.out,
        genes=genes,
        plot=args.plot,
        spearman=args.spearman,
        tss=args.tss,
        groupby=args.groupby,
        modality=args.modality,
        top_n=top_n,
        layer=args.layer,
        rna_mod=args.rna_mod,
        atac_mod=args.atac_mod,
        overwrite=args.overwrite,
        inputs=files,
        n_steps=args.steps,
        lr=args.lr,
        step_size=args.step_size,
        scale=args.scale,
        min_cells=args.min_cells,
        device=args.device,
        progress_bar=not args.quiet,
    )
    return json.dumps(summary, indent=2)


def _links(args: argparse.Namespace) -> str:
    from .analysis.links import MODEL_LINK_METHODS
    from .workflows import links_and_write

    _check_table_out(args.out)
    top_n = _top_n(args)
    model = None if args.model.lower() == "none" else Path(args.model)
    if model is None and args.method in MODEL_LINK_METHODS:
        raise ValueError(f"--method {args.method} needs a model file; 'none' works with spearman and linkpeaks")
    genes, files = _gene_list(args.genes)
    extra = {"device": args.device, "progress_bar": not args.quiet} if args.method == "silencing" else {}
    summary = links_and_write(
        model,
        args.data,
        args.out,
        genes=genes,
        method=args.method,
        plot=args.plot,
        tss=args.tss,
        overwrite=args.overwrite,
        inputs=files,
        window=args.window,
        top_n=top_n,
        n_background=args.background,
        seed=args.seed,
        rna_mod=args.rna_mod,
        atac_mod=args.atac_mod,
        layer=args.layer,
        **extra,
    )
    return json.dumps(summary, indent=2)


def _differential(args: argparse.Namespace) -> str:
    from .workflows import differential_and_write

    _check_table_out(args.out)
    summary = differential_and_write(
        args.model,
        args.data,
        args.out,
        plot=args.plot,
        overwrite=args.overwrite,
        groupby=args.groupby,
        group1=args.group1,
        group2=args.group2,
        modality=args.modality,
        delta=args.delta,
        fdr=args.fdr,
        batch_correction=args.batch_correction,
        n_cells=args.n_cells,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        rna_mod=args.rna_mod,
        atac_mod=args.atac_mod,
        layer=args.layer,
        progress_bar=not args.quiet,
        infer_kwargs={"device": args.device, "progress_bar": not args.quiet},
    )
    return json.dumps(summary, indent=2)


#: Each command: the function that runs it (returns the text printed) and the exceptions,
#: besides :data:`USER_ERRORS`, that it reports as input errors.
_COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], str | None], tuple[type[Exception], ...]]] = {
    "demo": (_train, ()),
    "train": (_train, ()),
    "evaluate": (_evaluate, (ImportError,)),
    "embed": (_embed, (RuntimeError,)),
    "predict": (_embed, (RuntimeError,)),
    "gene2peak": (_gene2peak, (KeyError,)),
    "links": (_links, (KeyError,)),
    "differential": (_differential, ()),
}


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> str:
    """The line printed after Ctrl-C."""
    from .workflows import RunInterrupted

    if isinstance(err, RunInterrupted):
        return str(err)
    if args.command in ("demo", "train"):
        return f"interrupted; rerun with --resume to continue from {_train_out(args) / 'checkpoint.pt'}"
    return "interrupted; no output written (partial files removed)"


def main(argv: list[str] | None = None) -> int:
    """Run the ``multidgd`` command line.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 on a user error (bad data, option, file or
        destination; one line on stderr), 130 when interrupted (Ctrl-C).
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error (already printed)
        return stop.code if isinstance(stop.code, int) else 0
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    run, errors = _COMMANDS[args.command]
    try:
        # mudata's updates keep each modality's obs to itself while a command runs (as the
        # library's readers do); the caller's option is restored afterwards
        with mudata_options(pull_on_update=False):
            text = run(args)
    except (*USER_ERRORS, *errors) as err:
        print(f"multidgd: error: {cli_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"multidgd: {_interrupted(args, err)}", file=sys.stderr)
        return 130
    if text:
        print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
