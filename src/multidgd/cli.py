"""The ``multidgd`` command line: ``demo`` and ``train``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .config import PRECISIONS

__all__ = ["main", "train_and_report", "embed_and_write"]

logger = logging.getLogger("multidgd")


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
    max_epochs: int = 1000,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    batch_size: int | None = None,
    precision: str = "float32",
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train on ``data`` and write model, annotated data, figures and a summary into ``out``.

    Returns the summary (also written as ``summary.json``).
    """
    from .config import TrainConfig
    from .io import add_results, write
    from .model import DGD
    from .plotting import plot_history, plot_model_covariates, plot_umap, umap_coordinates

    covariate_keys = covariate_keys or []
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = DGD(
        data,
        rna_mod=rna_mod,
        atac_mod=atac_mod,
        layer=layer,
        cell_type_key=cell_type_key,
        covariate_keys=covariate_keys,
    )
    config = TrainConfig(precision=precision, **({} if batch_size is None else {"batch_size": batch_size}))
    model.train(
        max_epochs=max_epochs,
        seed=seed,
        device=device,
        config=config,
        checkpoint_path=out / "checkpoint.pt",
        resume=resume,
        progress_bar=progress_bar,
    )
    train_seconds = time.perf_counter() - t0
    from .distributed import is_main

    if not is_main():  # every process has the whole model; rank 0 writes the outputs
        return {}
    model.save(out / "model.pt")

    from .data import is_backed

    if is_backed(data) or any(is_backed(a) for a in getattr(data, "mod", {}).values()):
        # the counts stay in the input file; the results go into a file of their own
        import anndata as ad

        results = ad.AnnData(obs=pd_frame(data.obs_names))
        add_results(results, model)
        data_path = write(results, out / "multidgd_results")
    else:
        add_results(data, model)
        data_path = write(data, out / "multidgd")
    history = model.history
    history.to_csv(out / "history.csv")
    figures = [plot_history(history, out / "training_curves.png", best_epoch=model.best_epoch)]

    latent = model.get_latent_representation()
    ok = ~np.isnan(latent).any(axis=1)
    clustering = model.cluster()
    colorings = {"cluster": clustering.labels[ok]}
    if cell_type_key:
        cell_types = _obs_column(data, cell_type_key, model.obs_names)
        colorings = {"cell type": cell_types[ok], **colorings}
    coords = np.full((len(latent), 2), np.nan)
    coords[ok] = umap_coordinates(latent[ok], seed=seed)
    figures.append(plot_umap(coords[ok], colorings, out / "umap.png", title="UMAP of the basal latent"))
    for key in model.covariate_keys:
        labels = _obs_column(data, key, model.obs_names)
        figures.append(plot_model_covariates(model, key, labels, out / f"covariate_{key}.png"))

    train_cells = np.zeros(len(latent), dtype=bool)
    train_cells[(model.split == "train").to_numpy()] = True
    used = np.unique(clustering.labels[train_cells])
    best = history.loc[model.best_epoch]
    summary: dict[str, Any] = {
        "data": source,
        "cells": int(len(model.obs_names)),
        "cells_trained": int(len(model.state.train_index)),
        "cells_validation": int(len(model.state.val_index)),
        "genes": len(model.var_names["rna"]),
        "peaks": len(model.var_names["atac"]),
        "components": model.n_components,
        "components_used": int(len(used)),
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
    if cell_type_key:
        from sklearn.metrics import adjusted_rand_score

        summary["ari_clusters_vs_cell_type"] = round(
            float(adjusted_rand_score(cell_types[train_cells], clustering.labels[train_cells])), 4
        )
    summary["outputs"] = sorted(str(p.name) for p in [data_path, out / "model.pt", out / "history.csv", *figures])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def embed_and_write(
    model_path: Path,
    data_path: Path,
    out: Path,
    *,
    predict: bool = False,
    denoise: bool = False,
    threshold: float | None = None,
    model_out: Path | None = None,
    **infer_kw: Any,
) -> dict[str, Any]:
    """Embed the cells of ``data_path`` into a saved model and write the annotated data.

    With ``predict``, every modality that some cells lack is added, for all cells, as a
    modality ``<name>_predicted`` holding predicted counts (``denoise`` adds the present
    ones too). Returns a summary.
    """
    import anndata as ad
    import mudata as md
    import scipy.sparse as sp

    from .data import MODALITIES
    from .io import read, write
    from .model import DGD

    if threshold is not None and not threshold > 0:
        raise ValueError(f"--threshold must be > 0, got {threshold}")
    model = DGD.load(model_path)
    data = read(data_path)
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
        model_out = model_out or out.with_name(out.stem + ".model.pt")
        model.save(model_out)
        summary["learned_classes"] = emb.learned_classes
        summary["model_out"] = str(model_out)

    if predict:
        if isinstance(data, ad.AnnData):
            present = [m for j, m in enumerate(MODALITIES) if emb.observed[:, j].any()]
            name = model.source_modality[present[0]] if len(present) == 1 else "input"
            data = md.MuData({name: data})
        predicted = []
        for j, m in enumerate(MODALITIES):
            if emb.observed[:, j].all() and not denoise:
                continue
            getter = model.get_normalized_expression if m == "rna" else model.get_normalized_accessibility
            kw = {"return_type": "sparse", "threshold": threshold} if threshold else {"return_type": "array"}
            x = getter(emb, scale="counts", **kw)
            if not sp.issparse(x):
                x = x.astype(np.float32)
            key = f"{model.source_modality.get(m, m)}_predicted"
            pred = ad.AnnData(x, obs=pd_frame(emb.obs_names), var=pd_frame(model.var_names[m]))
            pred.obs["library_size"] = emb.library_size[:, j]
            pred.obs["library_size_source"] = emb.library_size_source[:, j]
            pred.obs["observed"] = emb.observed[:, j]
            data.mod[key] = pred
            predicted.append(key)
        data.update()
        summary["predicted_modalities"] = predicted
    emb.add_to(data)
    summary["out"] = str(write(data, out))
    return summary


def pd_frame(index) -> Any:
    import pandas as pd

    return pd.DataFrame(index=pd.Index([str(x) for x in index]))


def _nan_mean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return None if np.isnan(values).all() else round(float(np.nanmean(values)), 3)


def _obs_column(data: Any, key: str, obs_names) -> np.ndarray:
    from .data import obs_column

    return obs_column(data, key, obs_names).astype(str).to_numpy()


def _print_summary(summary: dict[str, Any], out: Path) -> None:
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
    lines.append(f"  mixture components used: {summary['components_used']} of {summary['components']}")
    if "ari_clusters_vs_cell_type" in summary:
        lines.append(f"  ARI clusters vs cell types (training cells): {summary['ari_clusters_vs_cell_type']:.3f}")
    lines.append(f"  outputs in {out}: {', '.join(summary['outputs'])}")
    print("\n".join(lines))


def _add_common(p: argparse.ArgumentParser, *, default_epochs: int) -> None:
    p.add_argument("--out", type=Path, default=None, help="output directory")
    p.add_argument("--max-epochs", type=int, default=default_epochs, help="upper bound on epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--batch-size", type=int, default=None, help="cells per minibatch (default 128)")
    p.add_argument(
        "--precision",
        choices=list(PRECISIONS),
        default="float32",
        help="bfloat16: the decoder's matmuls in bfloat16 (GPUs, CPUs with bf16 support)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multidgd", description="multiDGD for paired RNA + ATAC counts")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train on the bundled SNARE-seq demo data")
    _add_common(demo, default_epochs=1000)
    train = sub.add_parser("train", help="train on a .h5mu or .h5ad file")
    train.add_argument("data", type=Path, help=".h5mu (MuData), .h5ad (AnnData with var['feature_types']) or .zarr")
    train.add_argument("--rna-mod", default="rna")
    train.add_argument("--atac-mod", default="atac")
    train.add_argument("--layer", default=None, help="layer with raw counts (default X)")
    train.add_argument("--cell-type-key", default=None)
    train.add_argument("--covariate-keys", nargs="*", default=[])
    train.add_argument(
        "--backed",
        action="store_true",
        help="leave the counts on disk and read rows per minibatch (X stored as CSR); "
        "results go to DIR/multidgd_results.h5ad",
    )
    _add_common(train, default_epochs=1000)
    ev = sub.add_parser("evaluate", help="train on a split, embed the test cells and report the paper's metrics")
    ev.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts")
    ev.add_argument("--out", type=Path, required=True, help="output directory")
    ev.add_argument("--cell-type-key", required=True)
    ev.add_argument("--batch-key", default=None, help="obs column of batches (the covariate)")
    ev.add_argument("--split-csv", type=Path, default=None, help="CSV with columns obs_name,split")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--max-epochs", type=int, default=1000)
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
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--quiet", action="store_true")
    for name, text in (
        ("embed", "place new cells into a trained model (no retraining)"),
        ("predict", "embed new cells and predict the modality they lack"),
    ):
        q = sub.add_parser(name, help=text)
        q.add_argument("model", type=Path, help="model file written by train (model.pt)")
        q.add_argument("data", type=Path, help=".h5mu or .h5ad with raw counts")
        q.add_argument("--out", type=Path, required=True, help="output .h5mu (or .h5ad for embed of an AnnData)")
        q.add_argument("--new-classes", choices=["naive", "learn"], default="naive")
        q.add_argument("--covariate-start", choices=["search", "label"], default="search")
        q.add_argument("--steps", type=int, default=50, help="representation steps after the best start")
        q.add_argument("--rna-mod", default=None)
        q.add_argument("--atac-mod", default=None)
        q.add_argument("--layer", default=None)
        q.add_argument("--rna-library-key", default=None, help="obs column with RNA library sizes")
        q.add_argument("--atac-library-key", default=None, help="obs column with ATAC library sizes")
        q.add_argument("--model-out", type=Path, default=None, help="where a model with learned classes is written")
        q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        q.add_argument("--quiet", action="store_true")
        if name == "predict":
            q.add_argument("--denoise", action="store_true", help="also write decoded present modalities")
            q.add_argument("--threshold", type=float, default=None, help="store predictions >= this, sparse")
    g = sub.add_parser("gene2peak", help="peaks (or genes) that change when a gene is silenced in silico")
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
    g.add_argument("--scale", choices=["fraction", "counts"], default="fraction")
    g.add_argument("--top-n", type=int, default=None, help="keep the top N features per gene and group")
    g.add_argument("--min-cells", type=int, default=1, help="skip genes expressed in fewer cells")
    g.add_argument("--spearman", type=Path, default=None, help="also write the Spearman baseline table here")
    g.add_argument(
        "--tss",
        default=None,
        help="'GRCh38' (bundled) or a TSS TSV/GTF: also write the TSS profile next to --out (.csv and .png)",
    )
    g.add_argument("--rna-mod", default=None)
    g.add_argument("--atac-mod", default=None)
    g.add_argument("--layer", default=None)
    g.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    g.add_argument("--quiet", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    from .datasets import demo_path
    from .io import read

    if args.command in ("embed", "predict"):
        return _main_embed(args)
    if args.command == "evaluate":
        return _main_evaluate(args)
    if args.command == "gene2peak":
        return _main_gene2peak(args)
    try:
        if args.command == "demo":
            path = demo_path()
            kw = {"cell_type_key": "cell_type", "covariate_keys": ["sample"]}
            out = args.out or Path("multidgd_demo")
        else:
            path = args.data
            kw = {
                "rna_mod": args.rna_mod,
                "atac_mod": args.atac_mod,
                "layer": args.layer,
                "cell_type_key": args.cell_type_key,
                "covariate_keys": args.covariate_keys,
            }
            out = args.out or Path(f"multidgd_{Path(path).stem}")
        data = read(path, backed=getattr(args, "backed", False))
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
            **kw,
        )
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"multidgd: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"multidgd: interrupted; rerun with --resume to continue from {out / 'checkpoint.pt'}", file=sys.stderr)
        return 130
    if summary:
        _print_summary(summary, out)
    return 0


def _main_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import read_split_csv, run_evaluation
    from .io import read

    try:
        if args.max_epochs < 1:
            raise ValueError(f"--max-epochs must be >= 1, got {args.max_epochs}")
        if args.compare:
            from .compare import require_scvi

            require_scvi()
        data = read(args.data)
        split = None
        if args.split_csv is not None:
            import pandas as pd

            split = read_split_csv(args.split_csv, pd.Index(data.obs_names.astype(str)))
        metrics = run_evaluation(
            data,
            args.out,
            cell_type_key=args.cell_type_key,
            batch_key=args.batch_key,
            split=split,
            seed=args.seed,
            max_epochs=args.max_epochs,
            holdout_batch=args.holdout_batch,
            train_fraction=args.train_fraction,
            compare=args.compare or [],
            compare_max_epochs=args.compare_max_epochs,
            model_path=args.model,
            device=args.device,
            progress_bar=not args.quiet,
            source=args.data.name,
        )
    except (ValueError, FileNotFoundError, TypeError, ImportError) as err:
        print(f"multidgd: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(metrics, indent=2))
    return 0


def _main_embed(args: argparse.Namespace) -> int:
    kw = {
        "predict": args.command == "predict",
        "model_out": args.model_out,
        "new_classes": args.new_classes,
        "covariate_start": args.covariate_start,
        "n_steps": args.steps,
        "rna_mod": args.rna_mod,
        "atac_mod": args.atac_mod,
        "layer": args.layer,
        "rna_library_key": args.rna_library_key,
        "atac_library_key": args.atac_library_key,
        "device": args.device,
        "progress_bar": not args.quiet,
    }
    if args.command == "predict":
        kw.update(denoise=args.denoise, threshold=args.threshold)
    try:
        summary = embed_and_write(args.model, args.data, args.out, **kw)
    except (ValueError, FileNotFoundError, TypeError, RuntimeError) as err:
        print(f"multidgd: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _gene_list(values: list[str]) -> list[str]:
    genes = []
    for v in values:
        if v.startswith("@"):
            path = Path(v[1:])
            if not path.exists():
                raise FileNotFoundError(f"--genes: no file {path}")
            genes += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            genes.append(v)
    return genes


def _write_table(table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


def _main_gene2peak(args: argparse.Namespace) -> int:
    from . import analysis
    from .io import read
    from .model import DGD

    try:
        if args.out.suffix not in (".csv", ".tsv", ".gz"):
            raise ValueError(f"--out must end in .csv, .csv.gz or .tsv, got {args.out.name}")
        if args.tss is not None and args.modality != "atac":
            raise ValueError("--tss needs --modality atac (a profile of peaks)")
        if args.tss is not None and args.top_n is not None:
            raise ValueError("--tss needs every peak per gene: leave out --top-n")
        genes = _gene_list(args.genes)
        model = DGD.load(args.model)
        data = read(args.data)
        table = analysis.gene2peak(
            model,
            data,
            genes=genes,
            groupby=args.groupby,
            modality=args.modality,
            n_steps=args.steps,
            lr=args.lr,
            step_size=args.step_size,
            scale=args.scale,
            top_n=args.top_n,
            min_cells=args.min_cells,
            rna_mod=args.rna_mod,
            atac_mod=args.atac_mod,
            layer=args.layer,
            device=args.device,
            progress_bar=not args.quiet,
        )
        mods = model.modality_names(args.rna_mod, args.atac_mod)
        outputs = [str(_write_table(table, args.out))]
        if args.plot is not None:
            outputs.append(str(analysis.plot_gene2peak(table, args.plot)))
        if args.spearman is not None:
            baseline = analysis.spearman_gene2peak(
                data,
                genes=table["gene"].astype(str).unique().tolist(),
                groupby=args.groupby,
                modality=args.modality,
                top_n=args.top_n,
                layer=args.layer,
                rna_mod=mods["rna"],
                atac_mod=mods["atac"],
            )
            outputs.append(str(_write_table(baseline, args.spearman)))
        summary = {
            "genes": int(table["gene"].nunique()),
            "skipped_genes": sorted(set(genes) - set(table["gene"].astype(str))),
            "rows": len(table),
            "groups": int(table["group"].nunique()),
        }
        if args.tss is not None:
            if not hasattr(data, "mod"):
                raise ValueError("--tss needs a MuData with an ATAC modality for the peak coordinates")
            peaks, rna_var = data.mod[mods["atac"]].var, data.mod[mods["rna"]].var
            groups = table["group"].astype(str).unique()
            stem = args.out.name.split(".")[0]
            for grp in groups:
                profile = analysis.tss_profile(table, peaks, args.tss, group=grp, rna_var=rna_var)
                tag = "" if len(groups) == 1 else f"_{grp}".replace(" ", "_").replace("/", "_")
                base = args.out.with_name(f"{stem}_tss_profile{tag}")
                outputs.append(str(_write_table(profile, base.with_suffix(".csv"))))
                title = f"{len(profile.attrs['genes_with_peaks_in_window'])} genes with a peak within 10 kb"
                outputs.append(str(analysis.plot_tss_profile(profile, base.with_suffix(".png"), title=title)))
            summary["tss_genes_with_peaks"] = len(profile.attrs["genes_with_peaks_in_window"])
        summary["outputs"] = outputs
    except (ValueError, FileNotFoundError, TypeError, KeyError) as err:
        print(f"multidgd: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
