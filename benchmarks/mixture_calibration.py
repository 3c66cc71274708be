"""How sure the mixture's cluster assignments are, and how far the clusters moved from the start.

For a saved model and the data it was trained on (e.g. an ``evaluate`` run's ``model.pt``):

* p(k | counts) of every trained cell (:meth:`multidgd.DGD.cluster` with data, temperature
  fitted); for the training cells, by bins of the probability of the cell's own cluster,
  how many cells and what fraction of them disagree with the majority cell type of their
  cluster (the same for p(k | z), the responsibilities at the representations);
* the mixture's ARI against the cell types beside what a user would run on the same latent
  (training cells): Leiden with as many clusters as cell types (``leiden_matched``, as
  ``evaluate --compare`` does) and k-means with that many clusters;
* the start: the k-means assignment the mixture started from (the PCA start and its
  k-means centres, recomputed with the model's seed and split), its ARI against the final
  clusters and the ARI of each against the cell types.

    python benchmarks/mixture_calibration.py DATA.h5mu MODEL.pt --cell-type-key cell_type [--plot FILE]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

#: Bin edges of the probability of a cell's own cluster.
EDGES = (0.0, 0.5, 0.7, 0.9, 0.99, 0.999, 1.0)


def disagreement_by_bin(prob: np.ndarray, labels: np.ndarray, cell_types: np.ndarray) -> list[dict]:
    """Per bin of ``prob`` (:data:`EDGES`, the last one closed), the cells and the fraction
    of them whose cluster's majority cell type is not their own.
    """
    import pandas as pd

    majority = pd.crosstab(labels, cell_types).idxmax(axis=1)
    wrong = majority.reindex(labels).to_numpy() != cell_types
    bins = np.clip(np.digitize(prob, EDGES[1:-1]), 0, len(EDGES) - 2)
    rows = []
    for b in range(len(EDGES) - 1):
        sel = bins == b
        frac = float(wrong[sel].mean()) if sel.any() else None
        rows.append({"from": EDGES[b], "to": EDGES[b + 1], "cells": int(sel.sum()), "disagree": frac})
    return rows


def start_clusters(model, data) -> np.ndarray:
    """The k-means assignment of the training cells training started from (order of ``state.train_index``)."""
    from multidgd.data import read_multiome
    from multidgd.initialization import kmeans_centres, start_representation

    counts = read_multiome(data, cell_type_key=model.description.cell_type_key, covariate_keys=model.covariate_keys)
    if not counts.obs_names.equals(model.obs_names[model.description.kept]):
        raise ValueError("the data's cells are not those the model was trained on")
    state = model.state
    basal, _ = start_representation(
        counts, model.config, model.train_config, state.train_index, state.val_index, model.seed
    )
    centres = kmeans_centres(basal.numpy(), model.n_components, seed=model.seed)
    return ((basal.numpy()[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)


def main() -> None:
    """Run from the command line (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("model")
    p.add_argument("--cell-type-key", default="cell_type")
    p.add_argument("--plot", default=None, help="write the disagreement-by-bin figure here")
    args = p.parse_args()

    import mudata as md
    from sklearn.metrics import adjusted_rand_score

    from multidgd import DGD

    md.set_options(pull_on_update=False)
    data = md.read_h5mu(args.data)
    model = DGD.load(args.model)
    t0 = time.perf_counter()
    cl = model.cluster(data)
    seconds = time.perf_counter() - t0
    z_cl = model.cluster()
    train = (model.split == "train").to_numpy()
    types = data.obs[args.cell_type_key].astype(str).reindex(model.obs_names).to_numpy()
    labels = cl.labels[train]
    rows = np.arange(train.sum())
    own = cl.probabilities[train][rows, labels]
    own_z = z_cl.probabilities[train][rows, labels]
    start = start_clusters(model, data)
    kept_train = model.obs_names[model.description.kept][model.state.train_index]
    end = cl.labels[model.obs_names.get_indexer(kept_train)]
    start_types = types[model.obs_names.get_indexer(kept_train)]
    from sklearn.cluster import KMeans

    from multidgd.evaluation.multivi import leiden_matched
    from multidgd.metrics import components_used

    latent = model.get_latent_representation()[train]
    n_types = len(np.unique(types[train]))
    leiden, _ = leiden_matched(latent, n_types, seed=model.seed)
    kmeans = KMeans(n_types, n_init=20, random_state=model.seed).fit_predict(latent)
    out = {
        "model": args.model,
        "ari_mixture": adjusted_rand_score(types[train], labels),
        "ari_leiden_matched": adjusted_rand_score(types[train], leiden),
        "ari_kmeans": adjusted_rand_score(types[train], kmeans),
        "components_used": components_used(labels, model.n_components),
        "cells_train": int(train.sum()),
        "temperature": cl.temperature,
        "seconds": round(seconds, 1),
        "counts_posterior": disagreement_by_bin(own, labels, types[train]),
        "latent_responsibilities": disagreement_by_bin(own_z, labels, types[train]),
        "fraction_at_0999": {"counts": float((own >= 0.999).mean()), "latent": float((own_z >= 0.999).mean())},
        "ari_start_end": adjusted_rand_score(start, end),
        "ari_start_cell_type": adjusted_rand_score(start_types, start),
        "ari_end_cell_type": adjusted_rand_score(start_types, end),
        "start_components_used": components_used(start, model.n_components),
    }
    if args.plot:
        from multidgd.plotting import pyplot, save_figure

        fig, ax = pyplot().subplots(figsize=(5, 3.5))
        for key, name in (("counts_posterior", "p(k | counts)"), ("latent_responsibilities", "p(k | z)")):
            pts = [(i, r["disagree"]) for i, r in enumerate(out[key]) if r["disagree"] is not None]
            ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=name)
        ax.set_xticks(
            range(len(EDGES) - 1), [f"{EDGES[i]:g}–{EDGES[i + 1]:g}" for i in range(len(EDGES) - 1)], rotation=30
        )
        ax.set_xlabel("probability of the cell's own cluster")
        ax.set_ylabel("disagrees with the cluster's majority type")
        ax.legend()
        save_figure(fig, args.plot)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
