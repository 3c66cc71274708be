"""The mosaic experiment: hide ATAC for a third of the training cells and RNA for another third.

On the split of ``multidgd evaluate --seed S`` (80/10/10 stratified by cell type), the
training and validation cells are cut into thirds within each cell type: paired, RNA only
(ATAC hidden), ATAC only (RNA hidden). A model is trained on that mosaic with the defaults
(covariate ``--batch-key``) and scored on its training cells, and on the held-out test
cells (both modalities) by the metrics of ``multidgd evaluate``:

* ARI of the mixture clusters against the cell types;
* 1 - ASW by modality source within cell types (scIB's batch silhouette; 1: mixed);
* label transfer: a 15-nearest-neighbour classifier fitted on the paired cells' latent
  predicts the cell type of the RNA-only and of the ATAC-only cells (accuracy);
* test metrics (``heldout_metrics``) beside the average-profile baseline.

With ``--paired-model`` (the ``model.pt`` of ``multidgd evaluate`` on the same split and
seed) the same numbers are computed for it, on the same cells. One JSON object is printed.

    python benchmarks/mosaic.py DEMO.h5mu --seed 0 --paired-model evaluate_s0/model.pt
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

KINDS = ("paired", "rna_only", "atac_only")
TEST_KEYS = (
    "nll_rna",
    "nll_atac",
    "rna_rmse",
    "atac_auprc",
    "rna_from_atac_rmse",
    "atac_from_rna_auprc",
    "baseline_rna_rmse",
    "baseline_atac_auprc",
)


def mosaic_of(full, cell_types: np.ndarray, split: np.ndarray, seed: int):
    """The mosaic MuData of the training and validation cells, and each input cell's kind."""
    import mudata as md

    rng = np.random.default_rng(seed)
    kind = np.full(full.n_obs, "test", dtype=object)
    for t in np.unique(cell_types):
        idx = rng.permutation(np.flatnonzero((split != "test") & (cell_types == t)))
        kind[idx] = np.array(KINDS, dtype=object)[np.arange(len(idx)) % 3]
    ref = split != "test"
    mosaic = md.MuData(
        {
            "rna": full["rna"][ref & (kind != "atac_only")].copy(),
            "atac": full["atac"][ref & (kind != "rna_only")].copy(),
        }
    )
    mosaic.obs = full.obs[ref].copy()
    mosaic.obs["modality_source"] = pd.Categorical(kind[ref], categories=list(KINDS))
    return mosaic


def latent_scores(model, obs: pd.DataFrame, names: pd.Index) -> dict:
    """ARI, 1 - ASW by source and label transfer of ``model``'s latent for cells ``names``."""
    from sklearn.neighbors import KNeighborsClassifier

    from multidgd.metrics import ari, batch_asw

    z = pd.DataFrame(model.get_latent_representation(), index=model.obs_names).loc[names].to_numpy()
    clusters = pd.Series(model.cluster().labels, index=model.obs_names).loc[names].to_numpy()
    source = obs.loc[names, "modality_source"].astype(str).to_numpy()
    labels = obs.loc[names, "cell_type"].astype(str).to_numpy()
    paired = source == "paired"
    knn = KNeighborsClassifier(15).fit(z[paired], labels[paired])
    transfer = {s: float((knn.predict(z[source == s]) == labels[source == s]).mean()) for s in KINDS[1:]}
    return {"ari": ari(labels, clusters), "one_minus_asw_source": batch_asw(z, source, labels), "transfer": transfer}


def main(argv=None) -> dict:
    """Parse the arguments, run the experiment, print one JSON object."""
    import mudata as md

    from multidgd import DGD
    from multidgd.evaluation.heldout import heldout_metrics, stratified_split

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help=".h5mu with raw counts and obs cell_type")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the thirds and training")
    p.add_argument("--batch-key", default="sample", help="covariate (obs column)")
    p.add_argument("--max-epochs", type=int, default=300)
    p.add_argument("--paired-model", default=None, help="model.pt of multidgd evaluate on the same split")
    args = p.parse_args(argv)
    full = md.read_h5mu(args.data)
    cell_types = full.obs["cell_type"].astype(str).to_numpy()
    split = stratified_split(cell_types, args.seed)
    mosaic = mosaic_of(full, cell_types, split, args.seed)
    t0 = time.perf_counter()
    model = DGD(mosaic, cell_type_key="cell_type", covariate_keys=args.batch_key)
    model.train(args.max_epochs, seed=args.seed, progress_bar=False)
    out = {"seed": args.seed, "train_seconds": round(time.perf_counter() - t0, 1), "epochs": int(model.state.epoch)}
    out["best_epoch"] = int(model.best_epoch)
    out["cells"] = {k: int((mosaic.obs["modality_source"] == k).sum()) for k in KINDS}
    names = model.obs_names[np.isfinite(model.get_latent_representation()).all(axis=1)]
    test, train = full[split == "test"].copy(), full[split == "train"].copy()
    models = {"mosaic": model}
    if args.paired_model:
        models["paired"] = DGD.load(args.paired_model)
    for name, m in models.items():
        out[name] = latent_scores(m, mosaic.obs, names.intersection(m.obs_names))
        held = heldout_metrics(m, test, train).as_dict()
        out[name]["test"] = {k: held[k] for k in TEST_KEYS}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
