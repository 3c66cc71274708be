"""Train with defaults on a file's training cells and report clustering and fit quality as JSON.

The split is the paper's: 80/10/10 train/validation/test, stratified by cell type, seeded.
Test cells are not used. Prints one JSON line with: ARI of mixture clusters vs cell type
(training cells), mixture components that receive training cells, 1 - silhouette of the
basal latent by batch, the validation per-cell NLL of each modality next to the
average-profile baseline's (each validation cell predicted as the pooled mean training
profile times its own library size, same NB dispersions), epochs, seconds per epoch and
peak resident memory.

    python benchmarks/train_quality.py DATA.h5mu --cell-type-key cell_type --batch-key sample
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np
import torch

from multidgd.evaluation import stratified_split


def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data")
    p.add_argument("--cell-type-key", required=True)
    p.add_argument("--batch-key", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-epochs", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--config", default="{}", help="JSON of TrainConfig overrides (development only)")
    p.add_argument("--history", default=None, help="write the per-epoch history to this CSV")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (written every 5 epochs)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    p.add_argument("--save-model", default=None, help="write the trained model to this file")
    p.add_argument(
        "--exclude-batch", default=None, help="leave every cell of this batch out (the split stays the same)"
    )
    return p.parse_args(argv)


def _read_split(args):
    """Read the data with the seeded split in obs["_split"], less the excluded batch; and its obs."""
    from multidgd.io import read

    mdata = read(args.data)
    obs = mdata.obs.copy()
    obs["_split"] = stratified_split(obs[args.cell_type_key].astype(str).to_numpy(), args.seed)
    mdata.obs = obs
    if args.exclude_batch is not None:
        keep = (obs[args.batch_key].astype(str) != args.exclude_batch).to_numpy()
        if keep.all():
            raise SystemExit(f"no cell has {args.batch_key} == {args.exclude_batch!r}")
        mdata = mdata[keep].copy()
        obs = mdata.obs.copy()
    return mdata, obs


def baseline_val_nll(model) -> dict[str, float]:
    """Mean validation NLL per modality of the average-profile baseline.

    Each validation cell is predicted as the pooled training profile times its own library
    size, with the model's NB dispersions.

    Parameters
    ----------
    model
        A trained ``DGD`` with validation cells.

    Returns
    -------
    dict
        Modality -> mean per-cell NLL.
    """
    from multidgd.data import MODALITIES, gather_rows

    data = model.data
    state = model.state
    module = model.module.to("cpu")
    base = {}
    with torch.no_grad():
        for m in MODALITIES:
            x = data.counts[m]
            profile = np.asarray(x[state.train_index].sum(axis=0)).ravel() + 1e-12
            log_profile = torch.from_numpy(np.log(profile / profile.sum())).float()
            vrows = state.val_index
            lib = torch.from_numpy(data.library_size[vrows])
            logf = {m: log_profile.expand(len(vrows), -1)}
            counts = {m: gather_rows(x, vrows)}
            base[m] = float(module.reconstruction_nll(logf, counts, lib)[m].mean())
    return base


def main(argv=None) -> dict:
    """Train on the seeded split and print clustering and fit quality as one JSON line.

    Parameters
    ----------
    argv
        Arguments (see the module docstring).

    Returns
    -------
    dict
        The result printed.
    """
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sklearn.metrics import adjusted_rand_score, silhouette_score

    from multidgd import DGD, TrainConfig

    mdata, obs = _read_split(args)
    t0 = time.perf_counter()
    model = DGD(mdata, cell_type_key=args.cell_type_key, covariate_keys=[args.batch_key], split_key="_split")
    config = TrainConfig(**json.loads(args.config))
    model.train(
        max_epochs=args.max_epochs,
        seed=args.seed,
        device="cpu",
        config=config,
        progress_bar=False,
        checkpoint_path=args.checkpoint,
        resume=args.resume,
    )
    seconds = time.perf_counter() - t0
    if args.save_model:
        model.save(args.save_model)

    train = (model.split == "train").to_numpy()
    z = model.get_latent_representation()
    labels = obs[args.cell_type_key].astype(str).to_numpy()
    batches = obs[args.batch_key].astype(str).to_numpy()
    clusters = model.cluster().labels
    nll = model.reconstruction_nll()
    val = (nll["split"] == "validation").to_numpy()
    base = baseline_val_nll(model)

    h = model.history
    if args.history:
        h.to_csv(args.history)
    out = {
        "data": args.data.rsplit("/", 1)[-1],
        "seed": args.seed,
        "excluded_batch": args.exclude_batch,
        "config": json.loads(args.config),
        "cells_train": int(train.sum()),
        "cells_validation": int(val.sum()),
        "ari": round(float(adjusted_rand_score(labels[train], clusters[train])), 4),
        "components": model.n_components,
        "components_used": int(len(np.unique(clusters[train]))),
        "batch_1_minus_asw": (
            round(float(1 - silhouette_score(z[train], batches[train])), 4)
            if len(np.unique(batches[train])) > 1
            else None
        ),
        "val_nll_rna": round(float(nll.loc[val, "nll_rna"].mean()), 3),
        "val_nll_atac": round(float(nll.loc[val, "nll_atac"].mean()), 3),
        "baseline_val_nll_rna": round(base["rna"], 3),
        "baseline_val_nll_atac": round(base["atac"], 3),
        "train_nll_rna": round(float(nll.loc[train, "nll_rna"].mean()), 3),
        "train_nll_atac": round(float(nll.loc[train, "nll_atac"].mean()), 3),
        "epochs": int(h.index[-1]),
        "stopped_early": bool(model.state.stopped_early),
        "max_epochs": args.max_epochs,
        "best_epoch": int(model.best_epoch),
        "seconds_per_epoch": round(float(h["seconds"].median()), 3),
        "total_seconds": round(seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
