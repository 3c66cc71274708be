"""Mean +- sd over seeds of `multidgd evaluate` runs, as a markdown table (and JSON).

    python benchmarks/summarize_evaluations.py RUN_DIR [RUN_DIR ...] [--json OUT.json]

Each RUN_DIR holds the metrics.json of one seed (run with --compare multivi for the
MultiVI column). Prints the markdown table on stdout. The rows, labels and keys are the
library's (``multidgd.evaluation.REPORT_ROWS``, those shown in summaries), as in report.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from multidgd.evaluation import report_rows


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
    """Mean and sd over runs of every summary row (``multidgd.evaluation.report_rows``).

    Parameters
    ----------
    runs
        The ``metrics.json`` of each run.

    Returns
    -------
    text : str
        The markdown table.
    table : dict
        Per row label: ``(mean, sd)`` or None for ``multidgd``, ``multivi`` and ``baseline``.
    """
    n = len(runs)
    table = {}
    lines = [
        f"| metric ({n} seeds: {', '.join(str(r['seed']) for r in runs)}) | multidgd | MultiVI | "
        "average-profile baseline | better |",
        "|---|---|---|---|---|",
    ]
    for row in report_rows("summary"):
        s_ours = _stat([r.get(row.key) for r in runs])
        s_mv = _stat([r.get("multivi", {}).get(row.multivi) for r in runs]) if row.multivi else None
        s_base = _stat([r.get(row.baseline) for r in runs]) if row.baseline else None
        table[row.label] = {"multidgd": s_ours, "multivi": s_mv, "baseline": s_base}
        lines.append(f"| {row.label} | {_fmt(s_ours, n)} | {_fmt(s_mv, n)} | {_fmt(s_base, n)} | {row.better} |")
    return "\n".join(lines), table


def main(argv=None) -> None:
    """Print the table of the run directories given on the command line (see the module docstring).

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).
    """
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
    """Bar chart of the main metrics, mean and sd over seeds, with the baseline as a line.

    Parameters
    ----------
    table
        The table of :func:`summarize`.
    path
        Output PNG.
    n_seeds
        Number of runs, for the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = {row.key: row.label for row in report_rows("summary")}
    panels = [
        ("rna_rmse", "RNA RMSE (lower is better)"),
        ("atac_auprc", "ATAC AUPRC (higher is better)"),
        ("rna_from_atac_rmse", "RNA RMSE from ATAC (lower)"),
        ("atac_from_rna_auprc", "ATAC AUPRC from RNA (higher)"),
        ("ari_leiden", "ARI, Leiden, matched count"),
        ("batch_1_minus_asw", "1 - ASW by batch (higher)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(10, 6))
    for ax, (key, title) in zip(axes.ravel(), panels, strict=True):
        row = label[key]
        entries = [(tool, table[row][key]) for tool, key in (("multidgd", "multidgd"), ("MultiVI", "multivi"))]
        entries = [(t, s) for t, s in entries if s is not None]
        if not entries:  # e.g. the Leiden ARI, measured only beside MultiVI
            ax.text(0.5, 0.5, "not measured in these runs", ha="center", va="center", fontsize=8)
            ax.set_axis_off()
            ax.set_title(title, fontsize=9)
            continue
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
