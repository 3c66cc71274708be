"""Planted differential genes and peaks under a batch effect confounded with the groups. JSON lines.

Two groups of cells, A and B, are measured in two batches, b0 and b1, with the batch
confounded with the group (75 % of A in b0, 75 % of B in b1). In each modality:

* 5 % of the features are differential: 2- to 4-fold higher or lower in A (random sign);
* another 5 % differ only by batch: 2- to 4-fold in b1;
* every feature also varies with one of three cell states shared by both groups in equal
  proportions (log-scale sd 0.5 on a random 20 % of the features), so cells are not copies.

Counts are Poisson given the profile and a log-normal library size. A multidgd model is
trained with ``covariate_keys=["batch"]`` and ranks the features for A against B
(:meth:`multidgd.DGD.differential_expression` / ``_accessibility``); scanpy's
``rank_genes_groups`` (Wilcoxon on log-normalised counts, ranked by |score|) is run on the
same counts. Reported per seed, method and modality: AUPRC of the planted features in the
ranking, the same for the batch-only features (lower is better: prevalence is 0.05), the
share of batch-only features among the top ``n_planted``, and the calls at 5 % FDR.

    python benchmarks/differential_synthetic.py --seeds 0 1 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

N_CELLS, N_GENES, N_PEAKS = 2000, 1000, 5000
MEDIAN_LIBRARY = {"rna": 2000.0, "atac": 3000.0}
BASE_SD = {"rna": 1.5, "atac": 1.0}


def planted_data(seed: int):
    """The MuData, per modality the (F,) truth (1 planted, 2 batch-only, 0 neither) and the
    true log2 fold change of A against B of the groups' mean expected fractions.
    """
    import anndata as ad
    import mudata as md
    import pandas as pd

    from multidgd.datasets import sample_counts

    rng = np.random.default_rng(seed)
    group = rng.integers(0, 2, N_CELLS)
    batch = (rng.random(N_CELLS) < np.where(group == 0, 0.25, 0.75)).astype(int)
    state = rng.integers(0, 3, N_CELLS)
    log_library = rng.normal(0.0, 0.5, N_CELLS)
    mods, truth, true_lfc = {}, {}, {}
    for m, n_features in (("rna", N_GENES), ("atac", N_PEAKS)):
        kind = np.zeros(n_features, dtype=int)
        picked = rng.permutation(n_features)
        n_planted = n_features // 20
        kind[picked[:n_planted]] = 1
        kind[picked[n_planted : 2 * n_planted]] = 2
        size = rng.uniform(np.log(2), np.log(4), n_features) * rng.choice([-1, 1], n_features)
        base = rng.normal(0.0, BASE_SD[m], n_features)
        state_effect = rng.normal(0.0, 0.5, (3, n_features)) * (rng.random(n_features) < 0.2)
        logit = np.empty((2, 2, 3, n_features))
        for g in range(2):
            for b in range(2):
                logit[g, b] = base + state_effect + (kind == 1) * size * (g == 0) + (kind == 2) * size * (b == 1)
        p = np.exp(logit - logit.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        combo = (group * 2 + batch) * 3 + state
        flat = p.reshape(-1, n_features)
        x = sample_counts(flat, combo, MEDIAN_LIBRARY[m] * np.exp(log_library), rng)
        names = (
            [f"gene{j}" for j in range(n_features)]
            if m == "rna"
            else [f"chr1:{1000 * j}-{1000 * j + 500}" for j in range(n_features)]
        )
        mods[m] = ad.AnnData(
            X=x, var=pd.DataFrame(index=names), obs=pd.DataFrame(index=[f"cell{i}" for i in range(N_CELLS)])
        )
        truth[m] = pd.Series(kind, index=names)
        a_mean, b_mean = flat[combo[group == 0]].mean(axis=0), flat[combo[group == 1]].mean(axis=0)
        true_lfc[m] = pd.Series(np.log2(a_mean) - np.log2(b_mean), index=names)
    mdata = md.MuData(mods)
    mdata.obs["group"] = pd.Categorical(np.array(["A", "B"])[group])
    mdata.obs["batch"] = pd.Categorical(np.array(["b0", "b1"])[batch])
    return mdata, truth, true_lfc


def ranking_scores(order, truth, true_lfc, called=None) -> dict:
    """AUPRC of planted and of batch-only features for a ranking (features, best first), and the calls.

    A called feature neither planted nor batch-only is still a change in the normalised
    profile when the planted features shift the composition; ``null_true_abs_lfc`` gives the
    median and largest true |log2 fold change| of those features.
    """
    from sklearn.metrics import average_precision_score

    kind = truth.reindex(order).to_numpy()
    score = -np.arange(len(order), dtype=float)
    n_planted = int((truth == 1).sum())
    out = {
        "auprc_planted": round(float(average_precision_score(kind == 1, score)), 4),
        "auprc_batch_only": round(float(average_precision_score(kind == 2, score)), 4),
        "batch_only_in_top": int((kind[:n_planted] == 2).sum()),
        "planted_in_top": int((kind[:n_planted] == 1).sum()),
        "n_planted": n_planted,
    }
    if called is not None:
        kind_called = truth.reindex(called).to_numpy()
        out.update(
            called=len(called),
            called_planted=int((kind_called == 1).sum()),
            called_batch_only=int((kind_called == 2).sum()),
            called_null=int((kind_called == 0).sum()),
        )
    null = np.abs(true_lfc[truth == 0].to_numpy())
    out["null_true_abs_lfc"] = [round(float(np.median(null)), 3), round(float(null.max()), 3)]
    return out


def wilcoxon(mdata, modality: str):
    """The Wilcoxon test of scanpy, A against B, on log-normalised counts: (ranking, called at BH 5 %)."""
    import scanpy as sc

    adata = mdata[modality].copy()
    adata.obs["group"] = mdata.obs["group"].to_numpy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.tl.rank_genes_groups(adata, "group", groups=["A"], reference="B", method="wilcoxon", n_genes=adata.n_vars)
    res = sc.get.rank_genes_groups_df(adata, group="A")
    order = res.iloc[np.argsort(-np.abs(res["scores"].to_numpy()), kind="stable")]["names"].tolist()
    return order, res.loc[res["pvals_adj"] < 0.05, "names"].tolist()


def main() -> None:
    """Run every seed and print one JSON line per seed, method and modality."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-epochs", type=int, default=300)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from multidgd import DGD

    for seed in args.seeds:
        mdata, truth, true_lfc = planted_data(seed)
        t0 = time.perf_counter()
        model = DGD(mdata, cell_type_key="group", covariate_keys=["batch"])
        model.train(max_epochs=args.max_epochs, seed=seed, progress_bar=False)
        train_s = time.perf_counter() - t0
        for modality in ("rna", "atac"):
            getter = model.differential_expression if modality == "rna" else model.differential_accessibility
            for correct in ("both", "covariate", "within", "none"):
                method = f"multidgd_{correct}"
                t0 = time.perf_counter()
                table = getter(groupby="group", group1="A", group2="B", batch_correction=correct, progress_bar=False)
                called = table.index[table["is_de_fdr"]].tolist()
                row = ranking_scores(table.index.tolist(), truth[modality], true_lfc[modality], called)
                row.update(seed=seed, method=method, modality=modality, seconds=round(time.perf_counter() - t0, 2))
                row.update(epochs=model.best_epoch, train_s=round(train_s, 1))
                print(json.dumps(row), flush=True)
            order, called = wilcoxon(mdata, modality)
            row = ranking_scores(order, truth[modality], true_lfc[modality], called)
            print(json.dumps({**row, "seed": seed, "method": "scanpy_wilcoxon", "modality": modality}), flush=True)


if __name__ == "__main__":
    main()
