"""Held-out ATAC scored against profiles built from observed training counts. One JSON line.

How far above the average profile can a prediction of a test cell's ATAC get without a
decoder? The test cells of the seeded 80/10/10 split (stratified by cell type, as
``multidgd evaluate`` makes it) are scored, AUPRC over all cells x peaks and per cell, with
predicted counts = profile x the cell's observed ATAC library size, for:

* ``average``: the average profile of the training cells (the null of ``evaluate``);
* ``type_average_a``: the pooled observed profile of the training cells of the test cell's
  own annotated type (an oracle: it reads the test cell's label), shrunk towards the
  average profile, ``a * type + (1 - a) * average``;
* with ``--model``: ``model``, the model's paired reconstruction of the cell (what
  ``evaluate`` scores as the paired ATAC AUPRC), and ``neighbours_k``, the mean observed
  ATAC fractions of the k training cells nearest to the test cell's paired representation.

    python benchmarks/atac_reference_profiles.py DATA.h5mu --cell-type-key cell_type --seed 0 [--model MODEL.pt]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.sparse as sp

SHRINK = (1.0, 0.75, 0.5, 0.25)
NEIGHBOURS = (5, 15, 50, 200)


def fractions(x: sp.csr_matrix) -> sp.csr_matrix:
    """Rows divided by their sums (empty rows stay 0)."""
    total = np.asarray(x.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(total, 1.0)) @ x


def neighbour_profiles(latent_train: np.ndarray, frac_train: sp.csr_matrix, latent: np.ndarray, k: int) -> np.ndarray:
    """(n, F) mean of the k nearest training rows' fractions, for each row of ``latent``."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k).fit(latent_train).kneighbors(latent, return_distance=False)
    weights = sp.csr_matrix(
        (np.full(idx.size, 1.0 / k), idx.ravel(), np.arange(0, idx.size + 1, k)), shape=(len(idx), len(latent_train))
    )
    return np.asarray((weights @ frac_train).todense())


def main() -> None:
    """Score the reference profiles and print them as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data")
    parser.add_argument("--cell-type-key", required=True)
    parser.add_argument("--atac-mod", default="atac")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()

    import mudata as md

    from multidgd.evaluation import stratified_split
    from multidgd.metrics import auprc, per_cell_auprc

    data = md.read_h5mu(args.data)
    types = data.obs[args.cell_type_key].astype(str).to_numpy()
    split = stratified_split(types, args.seed)
    atac = data.mod[args.atac_mod]
    x = sp.csr_matrix(atac[split == "test"].X, dtype=np.float64)
    x_train = sp.csr_matrix(atac[split == "train"].X, dtype=np.float64)
    lib = np.asarray(x.sum(axis=1)).ravel()[:, None]
    average = np.asarray(x_train.sum(axis=0)).ravel() / x_train.sum()

    def score(profiles: np.ndarray) -> list[float]:
        predicted = lib * profiles
        return [round(auprc(x, predicted), 5), round(float(np.nanmean(per_cell_auprc(x, predicted))), 5)]

    out = {"data": args.data, "seed": args.seed, "test_cells": int(x.shape[0]), "metrics": ["auprc", "auprc_per_cell"]}
    out["average"] = score(np.broadcast_to(average, x.shape))
    train_types, test_types = types[split == "train"], types[split == "test"]
    pooled = {}
    for t in np.unique(train_types):
        counts = np.asarray(x_train[train_types == t].sum(axis=0)).ravel()
        pooled[t] = counts / counts.sum()
    for a in SHRINK:
        rows = [a * pooled[t] + (1 - a) * average if t in pooled else average for t in test_types]
        out[f"type_average_{a:g}"] = score(np.stack(rows))
    if args.model is not None:
        from multidgd import DGD

        model = DGD.load(args.model)
        test = data[split == "test"].copy()
        emb = model.infer(test, atac_mod=args.atac_mod, progress_bar=False)
        out["model"] = score(model.get_normalized_accessibility(emb, scale="fraction", return_type="array"))
        latent_train = model.get_latent_representation(indices=data.obs_names[split == "train"])
        frac_train = fractions(x_train)
        for k in NEIGHBOURS:
            out[f"neighbours_{k}"] = score(neighbour_profiles(latent_train, frac_train, emb.latent, k))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
