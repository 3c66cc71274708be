"""Mean +- sd over seeds of `multidgd evaluate` runs, as a markdown table (and JSON).

    python benchmarks/summarize_evaluations.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

Each RUN_DIR holds the metrics.json of one seed (run with --compare multivi for the
MultiVI column). Prints the markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# (row label, multidgd key, MultiVI key, baseline key, better)
ROWS = [
    ("RNA RMSE, test (counts)", "rna_rmse", "rna_rmse", "baseline_rna_rmse", "lower"),
    ("RNA MAE, test (counts)", "rna_mae", "rna_mae", "baseline_rna_mae", "lower"),
    ("ATAC AUPRC, test", "atac_auprc", "atac_auprc", "baseline_atac_auprc", "higher"),
    ("RNA RMSE from ATAC only", "rna_from_atac_rmse", "rna_from_atac_rmse", "baseline_rna_rmse", "lower"),
    ("ATAC AUPRC from RNA only", "atac_from_rna_auprc", "atac_from_rna_auprc", "baseline_atac_auprc", "higher"),
    ("ARI, Leiden with matched cluster count", "ari_leiden", "ari", None, "higher"),
    ("ARI, mixture clusters (multidgd's own)", "ari", None, None, "higher"),
    ("1 - ASW by batch", "batch_1_minus_asw", "batch_1_minus_asw", None, "higher"),
    ("test NLL per cell, RNA", "nll_rna", None, None, "lower"),
    ("test NLL per cell, ATAC", "nll_atac", None, None, "lower"),
    ("epochs", "epochs", "epochs", None, ""),
    ("seconds per epoch", "seconds_per_epoch", "seconds_per_epoch", None, ""),
    ("training seconds", "train_seconds", "train_seconds", None, ""),
]


def _stat(values: list) -> tuple[float, float] | None:
    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return None
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def _fmt(stat, n: int) -> str:
    if stat is None:
        return "–"
    mean, sd = stat
    digits = 4 if abs(mean) < 10 else 1
    return f"{mean:.{digits}f} ± {sd:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


def summarize(runs: list[dict]) -> tuple[str, dict]:
    n = len(runs)
    table = {}
    lines = [
        f"| metric ({n} seeds: {', '.join(str(r['seed']) for r in runs)}) | multidgd | MultiVI | "
        "average-profile baseline | better |",
        "|---|---|---|---|---|",
    ]
    for label, ours, theirs, base, better in ROWS:
        s_ours = _stat([r.get(ours) for r in runs]) if ours else None
        s_mv = _stat([r.get("multivi", {}).get(theirs) for r in runs]) if theirs else None
        s_base = _stat([r.get(base) for r in runs]) if base else None
        table[label] = {"multidgd": s_ours, "multivi": s_mv, "baseline": s_base}
        lines.append(f"| {label} | {_fmt(s_ours, n)} | {_fmt(s_mv, n)} | {_fmt(s_base, n)} | {better} |")
    return "\n".join(lines), table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--plot", type=Path, default=None, help="bar chart of the main metrics (PNG)")
    args = p.parse_args(argv)
    runs = [json.loads((d / "metrics.json").read_text()) for d in args.runs]
    text, table = summarize(runs)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    if args.plot:
        plot(table, args.plot, len(runs))


def plot(table: dict, path: Path, n_seeds: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("RNA RMSE, test (counts)", "RNA RMSE (lower is better)"),
        ("ATAC AUPRC, test", "ATAC AUPRC (higher is better)"),
        ("RNA RMSE from ATAC only", "RNA RMSE from ATAC (lower)"),
        ("ATAC AUPRC from RNA only", "ATAC AUPRC from RNA (higher)"),
        ("ARI, Leiden with matched cluster count", "ARI, Leiden, matched count"),
        ("1 - ASW by batch", "1 - ASW by batch (higher)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6))
    for ax, (row, title) in zip(axes.ravel(), panels, strict=True):
        entries = [(tool, table[row][key]) for tool, key in (("multidgd", "multidgd"), ("MultiVI", "multivi"))]
        entries = [(t, s) for t, s in entries if s is not None]
        ax.bar(
            [t for t, _ in entries],
            [s[0] for _, s in entries],
            yerr=[s[1] for _, s in entries],
            color=["tab:blue", "tab:orange"][: len(entries)],
            capsize=4,
        )
        base = table[row]["baseline"]
        if base is not None:
            ax.axhline(base[0], color="grey", ls="--", lw=1, label="average profile")
            ax.legend(fontsize=7, loc="best")
        lo = min([s[0] - s[1] for _, s in entries] + ([base[0]] if base else []))
        hi = max([s[0] + s[1] for _, s in entries] + ([base[0]] if base else []))
        ax.set_ylim(max(0.0, lo - 0.15 * (hi - lo + 1e-9)), hi + 0.15 * (hi - lo + 1e-9))
        ax.set_title(title, fontsize=9)
    fig.suptitle(f"test metrics, mean and sd over {n_seeds} seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    main()
