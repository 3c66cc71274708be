"""Do peaks linked to a gene move more when the gene is silenced? gene2peak vs Spearman.

For a data file whose ``atac.var[LINK_KEY]`` names each peak's linked gene, and a model
trained on (some of) its cells: the ``--n-genes`` genes with at least ``--min-linked``
linked peaks that are expressed in the most cells are silenced in the model's cells; for
each gene, mean |ΔX̂| at its linked peaks is compared with the other peaks (paired
one-sided Wilcoxon test across genes) and the AUPRC of ranking linked peaks by |ΔX̂| is
reported next to the Spearman baseline's (|rho| over the same cells). The absolute change
(``mean_abs_delta``), the signed one (``mean_delta``: positive when the peak closes) and the
relative ones (``mean_abs_logfc``, ``mean_logfc``) are scored, and Spearman's |rho| and rho.

    python benchmarks/gene2peak_links.py DATA.h5mu MODEL.pt --out DIR

Prints one JSON line; writes both tables and the per-gene results to DIR.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mudata as md
import numpy as np
import pandas as pd

from multidgd import DGD, analysis


def main() -> None:
    """Run the comparison from the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--n-genes", type=int, default=60)
    p.add_argument("--min-linked", type=int, default=5)
    p.add_argument("--link-key", default="linked_gene")
    p.add_argument("--device", default="cpu")
    p.add_argument("--step-size", type=float, default=None, help="gradient steps of this length instead of Adam")
    p.add_argument("--n-steps", type=int, default=1)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    md.set_options(pull_on_update=False)
    mdata = md.read_h5mu(args.data)
    model = DGD.load(args.model)
    cells = mdata.obs_names.isin(model.obs_names[~np.isnan(model.get_latent_representation()).any(axis=1)])
    links = mdata.mod["atac"].var[args.link_key].astype(str)
    n_linked = links.value_counts()
    rna = mdata.mod["rna"][cells]
    expressing = pd.Series(np.asarray((rna.X > 0).sum(axis=0)).ravel(), index=rna.var_names)
    candidates = expressing[expressing.index.isin(n_linked[n_linked >= args.min_linked].index)]
    genes = candidates.sort_values(ascending=False, kind="stable").index[: args.n_genes].tolist()

    t0 = time.perf_counter()
    silencing = analysis.gene2peak(
        model,
        mdata,
        genes=genes,
        cells=cells,
        n_steps=args.n_steps,
        step_size=args.step_size,
        device=args.device,
        progress_bar=False,
    )
    t_silencing = time.perf_counter() - t0
    t0 = time.perf_counter()
    spearman = analysis.spearman_gene2peak(mdata, genes=genes, cells=cells)
    t_spearman = time.perf_counter() - t0
    result = {"data": args.data, "model": args.model, "n_cells": int(cells.sum()), "genes": len(genes)}
    result.update(n_steps=args.n_steps, step_size=args.step_size)
    result["expressing_cells_median"] = float(candidates[genes].median())
    runs = (
        ("silencing", silencing, t_silencing, ["mean_abs_delta", "mean_delta", "mean_abs_logfc", "mean_logfc"]),
        ("spearman", spearman, t_spearman, ["abs_rho", "rho"]),
    )
    for name, table, seconds, scores in runs:
        table.to_csv(out / f"table_{name}.csv.gz", index=False)
        for score in scores:
            ev = analysis.link_enrichment(table, links, score=score)
            ev.per_gene.to_csv(out / f"links_per_gene_{name}_{score}.csv", index=False)
            result[f"{name}:{score}"] = ev.summary
        result[f"{name}_seconds"] = round(seconds, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
