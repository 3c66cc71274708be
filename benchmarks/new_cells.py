"""Embed held-out cells into trained models and report the paper's test metrics as JSON.

``split``: a model trained by ``train_quality.py --save-model`` on the seeded 80/10/10
split (stratified by cell type). Its test cells are embedded paired, with ATAC hidden
and with RNA hidden; prints RNA RMSE / MAE, ATAC AUPRC and per-cell NLL next to the
average-profile baseline (each test cell predicted as the pooled training profile times
its own library size), the cross-modal RMSE / AUPRC, and the time to embed the test cells
against the time of one training epoch over as many cells, measured in the same run.

``loo``: models trained without one sample (``train_quality.py --exclude-batch S``) and
the model trained on all samples. The excluded sample's test cells are embedded into the
leave-out model naive and with the sample learned as a new class, and into the full model;
prints the median per-cell NLL ratio (leave-out / full), and draws the covariate space of
the leave-out model with the learned component.

    python benchmarks/new_cells.py split DATA.h5mu MODEL.pt --cell-type-key cell_type
    python benchmarks/new_cells.py loo DATA.h5mu FULL.pt --cell-type-key cell_type \
        --batch-key sample --held-out 09C=loo_09C.pt --plot-dir DIR
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

from multidgd.evaluation import single_modality, stratified_split


def run_split(args) -> dict:
    """Test metrics of a model trained on the seeded split, and embedding against training time.

    Parameters
    ----------
    args
        The parsed ``split`` arguments.

    Returns
    -------
    dict
        The metrics printed as JSON.
    """
    from multidgd import DGD, TrainConfig
    from multidgd.evaluation import heldout_metrics
    from multidgd.io import read

    model = DGD.load(args.model)
    mdata = read(args.data)
    split = stratified_split(mdata.obs[args.cell_type_key].astype(str).to_numpy(), args.seed)
    test = mdata[split == "test"].copy()
    train = mdata[split == "train"].copy()
    res = heldout_metrics(model, test, train, device="cpu")
    out: dict = {"data": Path(args.data).name, "seed": args.seed}
    out.update({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.as_dict().items()})
    t0 = time.perf_counter()
    model.infer(test, device="cpu", progress_bar=False, n_steps=0)
    out["best_start_seconds"] = round(time.perf_counter() - t0, 2)
    # the ATAC library estimated from training neighbours, against the true one
    emb = res.embedding
    rna_only = model.infer(single_modality(test, "rna"), device="cpu", progress_bar=False)
    true_atac = np.asarray(test.mod["atac"].X.sum(axis=1)).ravel()
    out["atac_library_estimate_median_abs_log_ratio"] = round(
        float(np.median(np.abs(np.log(rna_only.library_size[:, 1] / true_atac)))), 3
    )
    out["components_used_test"] = int(len(np.unique(emb.cluster)))

    # one training epoch over as many cells, same model shape, in the same run
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(np.flatnonzero(split == "train"), size=test.n_obs, replace=False)
    sub = mdata[np.sort(idx)].copy()
    sub.obs["_all_train"] = "train"
    probe = DGD(
        sub,
        cell_type_key=args.cell_type_key,
        covariate_keys=model.covariate_keys,
        split_key="_all_train",
        config=model.config,
    )
    probe.train(max_epochs=2, seed=0, device="cpu", config=TrainConfig(), progress_bar=False)
    epoch = float(probe.history["seconds"].iloc[-1])
    out["train_epoch_seconds_same_cells"] = round(epoch, 3)
    out["embed_over_epoch"] = round(out["embed_seconds"] / epoch, 1)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_loo(args) -> dict:
    """Per-cell NLL ratios of left-out samples' test cells, leave-out model against the full one.

    Parameters
    ----------
    args
        The parsed ``loo`` arguments.

    Returns
    -------
    dict
        The ratios per sample and their medians, printed as JSON.
    """
    from multidgd import DGD
    from multidgd.io import read
    from multidgd.plotting import plot_model_covariates

    full = DGD.load(args.model)
    mdata = read(args.data)
    split = stratified_split(mdata.obs[args.cell_type_key].astype(str).to_numpy(), args.seed)
    batches = mdata.obs[args.batch_key].astype(str).to_numpy()
    results = {}
    for item in args.held_out:
        sample, path = item.split("=", 1)
        cells = (split == "test") & (batches == sample)
        test = mdata[cells].copy()
        loo = DGD.load(path)
        if sample in loo.covariate_categories[0]:
            raise SystemExit(f"{path} was trained with {sample}")
        ref = full.infer(test, device="cpu", progress_bar=False).nll
        naive = loo.infer(test, device="cpu", progress_bar=False).nll
        t0 = time.perf_counter()
        learned_emb = loo.infer(test, new_classes="learn", device="cpu", progress_bar=False)
        learn_seconds = time.perf_counter() - t0
        learned = learned_emb.nll
        row = {"test_cells": int(cells.sum()), "learn_seconds": round(learn_seconds, 1)}
        for name, nll in (("naive", naive), ("learned", learned)):
            total = nll.sum(axis=1) / ref.sum(axis=1)
            row[f"median_ratio_{name}"] = round(float(np.median(total)), 4)
            for m in ("rna", "atac"):
                row[f"median_ratio_{name}_{m}"] = round(float(np.median(nll[f"nll_{m}"] / ref[f"nll_{m}"])), 4)
        row["mean_nll_full"] = round(float(ref.sum(axis=1).mean()), 2)
        results[sample] = row
        if args.plot_dir:
            plot_model_covariates(
                loo,
                args.batch_key,
                mdata.obs[args.batch_key].astype(str).reindex(loo.obs_names).to_numpy(),
                Path(args.plot_dir) / f"covariate_space_learned_{sample}.png",
                embedding=learned_emb,
                embedding_labels=np.full(test.n_obs, sample),
                title=f"{args.batch_key}: {sample} learned as a new class",
            )
    ratios = [r["median_ratio_naive"] for r in results.values()]
    return {
        "data": Path(args.data).name,
        "seed": args.seed,
        "held_out": results,
        "median_ratio_naive_over_samples": round(float(np.median(ratios)), 4),
        "median_ratio_learned_over_samples": round(
            float(np.median([r["median_ratio_learned"] for r in results.values()])), 4
        ),
    }


def main(argv=None) -> dict:
    """Run ``split`` or ``loo`` (see the module docstring) and print the result as JSON.

    Parameters
    ----------
    argv
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    dict
        The result printed.
    """
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("split", "loo"):
        q = sub.add_parser(name)
        q.add_argument("data")
        q.add_argument("model", help="model trained on the seeded split (all samples)")
        q.add_argument("--cell-type-key", required=True)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=None)
        if name == "loo":
            q.add_argument("--batch-key", required=True)
            q.add_argument("--held-out", nargs="+", required=True, help="SAMPLE=MODEL_WITHOUT_IT.pt")
            q.add_argument("--plot-dir", default=None)
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = run_split(args) if args.mode == "split" else run_loo(args)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
