"""Which link score ranks a gene's linked peaks first? Every method of ``analysis.link_peaks``.

For a data file whose ``atac.var[LINK_KEY]`` names each peak's linked gene and a model
trained on its cells: the ``--n-genes`` genes with at least ``--min-linked`` linked peaks
that are expressed in the most of the model's cells (the genes of
``benchmarks/gene2peak_links.py``) are scored against every peak by each method, over the
model's training and validation cells. Each method runs in its own process, so its seconds
and peak resident memory (``VmHWM``; also after loading data and model) are its own.

Per gene, the AUPRC of ranking its linked peaks by ``score`` over all peaks (a peak a
method cannot score, e.g. one no cell of the set opens, ranks last), and the paired
Wilcoxon test across genes of each model-based score against each baseline.

    python benchmarks/links.py DATA.h5mu MODEL.pt --out DIR [--methods hybrid,spearman,...]

With ``--scale-genes N``, only the time and peak memory of each method for the N genes
expressed in the most cells against every peak (top 100 peaks kept per gene).

Prints one JSON object; writes each table (``table_METHOD.csv.gz``) and the per-gene AUPRCs
(``auprc_per_gene.csv``) to DIR.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from multidgd.analysis.links import LINK_METHODS, MODEL_LINK_METHODS

MODEL_BASED = MODEL_LINK_METHODS
BASELINES = tuple(m for m in LINK_METHODS if m not in MODEL_LINK_METHODS)
#: Baselines in the paired tests: linkpeaks_z is the linkpeaks table ranked by its z.
COMPARED = (*BASELINES, "linkpeaks_z")


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(args):
    import mudata as md
    import numpy as np

    from multidgd import DGD

    md.set_options(pull_on_update=False)
    data = md.read_h5mu(args.data)
    model = DGD.load(args.model)
    own = model.obs_names[~np.isnan(model.get_latent_representation()).any(axis=1)]
    return data, model, data.obs_names.isin(own)


def _genes(data, cells, args) -> list[str]:
    import numpy as np
    import pandas as pd

    links = data.mod["atac"].var[args.link_key].astype(str)
    n_linked = links.value_counts()
    rna = data.mod["rna"][cells]
    expressing = pd.Series(np.asarray((rna.X > 0).sum(axis=0)).ravel(), index=rna.var_names)
    candidates = expressing[expressing.index.isin(n_linked[n_linked >= args.min_linked].index)]
    return candidates.sort_values(ascending=False, kind="stable").index[: args.n_genes].tolist()


def _one(args) -> None:
    """Run one method in this process and print its time and memory."""
    import torch

    torch.set_num_threads(args.threads)
    from multidgd import analysis

    data, model, cells = _load(args)
    scale = args.scale_genes is not None
    genes = Path(args.out, "scale_genes.txt" if scale else "genes.txt").read_text().split()
    loaded = _peak_mb()
    extra = {"progress_bar": False, "device": "cpu"} if args.one == "silencing" else {}
    t0 = time.perf_counter()
    table = analysis.link_peaks(
        model if args.one in MODEL_BASED else None,
        data,
        genes=genes,
        method=args.one,
        cells=cells,
        top_n=100 if scale else None,
        **extra,
    )
    seconds = time.perf_counter() - t0
    if not scale:
        table.to_csv(Path(args.out, f"table_{args.one}.csv.gz"), index=False)
    cost = {"seconds": round(seconds, 1), "peak_mb_loaded": round(loaded), "peak_mb": round(_peak_mb())}
    print(json.dumps({**cost, "rows": len(table)}))


def _scale(args, data, cells) -> None:
    """Time and memory of each method for the --scale-genes most expressed genes."""
    import numpy as np

    rna = data.mod["rna"][cells]
    expressing = np.asarray((rna.X > 0).sum(axis=0)).ravel()
    genes = rna.var_names[np.argsort(-expressing, kind="stable")[: args.scale_genes]]
    Path(args.out, "scale_genes.txt").write_text("\n".join(genes) + "\n")
    result = {"data": Path(args.data).name, "genes": len(genes), "peaks": int(data.mod["atac"].n_vars)}
    for method in args.methods.split(","):
        result[method] = _run_one(args, method)
    print(json.dumps(result))


def _run_one(args, method: str) -> dict:
    cmd = [sys.executable, __file__, args.data, args.model, "--out", args.out, "--one", method]
    cmd += ["--threads", str(args.threads)]
    if args.scale_genes is not None:
        cmd += ["--scale-genes", str(args.scale_genes)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


def _auprc_per_gene(table, genes, peaks, links):
    """AUPRC per gene over every peak; peaks without a score rank last."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import average_precision_score

    out = {}
    for gene, rows in table.groupby("gene", sort=False):
        score = pd.Series(rows["score"].to_numpy(), index=rows["peak"].astype(str)).reindex(peaks)
        s = score.to_numpy(dtype=np.float64)
        low = np.nanmin(s) - 1.0 if np.isfinite(s).any() else 0.0
        out[str(gene)] = average_precision_score(links.to_numpy() == gene, np.where(np.isfinite(s), s, low))
    return pd.Series(out).reindex(genes)


def main() -> None:
    """Run every method in its own process and compare them (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--methods", default=",".join(MODEL_BASED + BASELINES))
    p.add_argument("--n-genes", type=int, default=60)
    p.add_argument("--min-linked", type=int, default=5)
    p.add_argument("--link-key", default="linked_gene")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--scale-genes", type=int, default=None, help="only time and memory for this many genes")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        _one(args)
        return
    import pandas as pd
    from scipy.stats import wilcoxon

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, _, cells = _load(args)
    if args.scale_genes is not None:
        _scale(args, data, cells)
        return
    genes = _genes(data, cells, args)
    (out / "genes.txt").write_text("\n".join(genes) + "\n")
    links = data.mod["atac"].var[args.link_key].astype(str)
    peaks = data.mod["atac"].var_names.astype(str)
    result = {"data": Path(args.data).name, "model": args.model, "n_cells": int(cells.sum()), "genes": len(genes)}
    result["prevalence"] = float(sum((links == g).sum() for g in genes) / (len(genes) * len(peaks)))
    auprc = {}
    for method in args.methods.split(","):
        cost = _run_one(args, method)
        table = pd.read_csv(out / f"table_{method}.csv.gz")
        auprc[method] = _auprc_per_gene(table, genes, peaks, links)
        result[method] = {**cost, "mean_auprc": float(auprc[method].mean())}
        if method == "linkpeaks":  # also ranked by its background z (the score is its correlation)
            auprc["linkpeaks_z"] = _auprc_per_gene(table.assign(score=table["z"]), genes, peaks, links)
            result[method]["mean_auprc_z"] = float(auprc["linkpeaks_z"].mean())
    per_gene = pd.DataFrame(auprc)
    per_gene.index.name = "gene"
    per_gene.to_csv(out / "auprc_per_gene.csv")
    tests = {}
    for m in [m for m in MODEL_BASED if m in auprc]:
        for b in [b for b in COMPARED if b in auprc]:
            diff = per_gene[m] - per_gene[b]
            tests[f"{m} vs {b}"] = {
                "genes_higher": int((diff > 0).sum()),
                "mean_difference": float(diff.mean()),
                "wilcoxon_p_two_sided": float(wilcoxon(per_gene[m], per_gene[b]).pvalue),
                "wilcoxon_p_greater": float(wilcoxon(per_gene[m], per_gene[b], alternative="greater").pvalue),
            }
    result["paired_tests"] = tests
    print(json.dumps(result))


if __name__ == "__main__":
    main()
