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
seed) the same numbers are computed for it, on the same cells; with ``--multivi`` for
MultiVI trained on the same mosaic. The PCA baselines (:func:`baseline_scores`) are always
computed, and so are the mosaic model's predictions of what its single-modality training
cells lack (:func:`hidden_prediction_scores`). One JSON object is printed.

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


def scores_of(z: np.ndarray, clusters: np.ndarray, source: np.ndarray, labels: np.ndarray) -> dict:
    """ARI of ``clusters``, 1 - ASW by source and label transfer from paired cells on ``z``."""
    from multidgd.metrics import ari, batch_asw

    transfer = {s: transfer_accuracy(z, source, labels, s) for s in KINDS[1:]}
    return {"ari": ari(labels, clusters), "one_minus_asw_source": batch_asw(z, source, labels), "transfer": transfer}


def transfer_accuracy(z: np.ndarray, source: np.ndarray, labels: np.ndarray, kind: str) -> float:
    """Accuracy on the ``kind`` cells of a 15-nearest-neighbour classifier fitted on the paired cells."""
    from sklearn.neighbors import KNeighborsClassifier

    paired = source == "paired"
    knn = KNeighborsClassifier(15).fit(z[paired], labels[paired])
    return float((knn.predict(z[source == kind]) == labels[source == kind]).mean())


def latent_scores(model, obs: pd.DataFrame, names: pd.Index) -> dict:
    """:func:`scores_of` ``model``'s latent and mixture clusters for cells ``names``."""
    z = pd.DataFrame(model.get_latent_representation(), index=model.obs_names).loc[names].to_numpy()
    clusters = pd.Series(model.cluster().labels, index=model.obs_names).loc[names].to_numpy()
    source = obs.loc[names, "modality_source"].astype(str).to_numpy()
    return scores_of(z, clusters, source, obs.loc[names, "cell_type"].astype(str).to_numpy())


def baseline_scores(full, obs: pd.DataFrame, batch_key: str, seed: int) -> dict:
    """The PCA baselines on the mosaic's cells (``obs``).

    * ``pca_start``: multidgd's PCA start of the mosaic (the paired cells' joint PCA, the
      others placed by least squares; centred within ``batch_key``), Leiden clusters matched
      to the number of cell types;
    * ``modality_pca_transfer``: label transfer within one modality, from the paired cells
      to the RNA-only cells on the PCA of RNA alone, and to the ATAC-only cells on the PCA
      of ATAC alone (no cross-modal step at all).
    """
    import scipy.sparse as sp

    from multidgd.evaluation.multivi import leiden_matched
    from multidgd.initialization import spectral_embedding

    source = obs["modality_source"].astype(str).to_numpy()
    labels = obs["cell_type"].astype(str).to_numpy()
    present = np.column_stack([source != "atac_only", source != "rna_only"])
    counts = {m: sp.csr_matrix(full[m][obs.index].X, dtype=np.float32) for m in ("rna", "atac")}
    counts = {m: (sp.diags(present[:, j].astype(np.float32)) @ x).tocsr() for j, (m, x) in enumerate(counts.items())}
    groups = pd.factorize(obs[batch_key].astype(str))[0][:, None]
    rows = np.arange(len(obs))
    z = spectral_embedding(counts, rows, 20, radius=1.0, groups=groups, seed=seed, present=present)
    clusters, _ = leiden_matched(z, len(np.unique(labels)), seed=seed)
    out = {"pca_start": scores_of(z, clusters, source, labels), "modality_pca_transfer": {}}
    for j, (m, kind) in enumerate((("rna", "rna_only"), ("atac", "atac_only"))):
        have = present[:, j]
        zm = spectral_embedding({m: counts[m]}, np.flatnonzero(have), 20, radius=1.0, groups=groups, seed=seed)
        out["modality_pca_transfer"][kind] = transfer_accuracy(zm, source[have], labels[have], kind)
    return out


def hidden_prediction_scores(model, full, mosaic, seed: int, max_cells: int = 1000) -> dict:
    """How well the mosaic model predicts what its single-modality training cells lack.

    For the RNA-only cells their hidden ATAC, for the ATAC-only cells their hidden RNA (at
    most ``max_cells`` of each, a seeded sample): the posterior prediction of
    :meth:`~multidgd.DGD.training_embedding` and the profile decoded from the cell's own
    representation (``point``), each as fractions times the hidden modality's true library
    size, beside the average profile of that modality over the mosaic's cells that have it.
    Also the median prediction certainty and its Spearman correlation with the per-cell
    score (does a surer prediction do better?).
    """
    import mudata as md
    import scipy.sparse as sp
    from scipy.stats import spearmanr

    from multidgd.evaluation.heldout import prediction_metrics

    rng = np.random.default_rng(seed)
    source = mosaic.obs["modality_source"].astype(str)
    out = {}
    for kind, have, lack in (("rna_only", "rna", "atac"), ("atac_only", "atac", "rna")):
        names = source.index[source == kind]
        names = names[np.sort(rng.choice(len(names), min(max_cells, len(names)), replace=False))]
        emb = model.training_embedding(md.MuData({have: mosaic[have][names].copy()}), progress_bar=False)
        truth = sp.csr_matrix(full[lack][emb.obs_names].X, dtype=np.float32)
        lib = np.asarray(truth.sum(axis=1)).ravel()
        getter = model.get_normalized_expression if lack == "rna" else model.get_normalized_accessibility
        reference = mosaic[lack].X
        profile = np.asarray(reference.sum(axis=0)).ravel()
        name = f"{lack}_from_{have}"
        predicted = {
            f"{name}_posterior": getter(emb, return_type="array") * lib[:, None],
            f"{name}_point": getter(emb, return_type="array", prediction="point") * lib[:, None],
            f"{name}_baseline": lib[:, None] * (profile / profile.sum())[None, :],
        }
        scores, cells = prediction_metrics({lack: truth}, predicted)
        per_cell = cells[f"{name}_posterior_{'pearson' if lack == 'rna' else 'cell_auprc'}"].to_numpy()
        certainty = emb.prediction_certainty
        ok = np.isfinite(per_cell)
        out[kind] = {k: round(float(v), 5) for k, v in scores.items()}
        out[kind]["cells"] = int(len(names))
        out[kind]["median_certainty"] = round(float(np.median(certainty)), 4)
        out[kind]["spearman_certainty_vs_cell_score"] = round(float(spearmanr(certainty[ok], per_cell[ok])[0]), 4)
    return out


def multivi_scores(full, split, obs: pd.DataFrame, kind: np.ndarray, batch_key: str, seed: int, max_epochs) -> dict:
    """MultiVI trained on the same mosaic (hidden modalities as zero counts, which it reads
    as missing): :func:`scores_of` its latent (Leiden clusters matched to the cell-type
    count) and its test metrics (``multidgd.evaluation.multivi``).
    """
    from multidgd.evaluation.multivi import leiden_matched, multivi_metrics

    cell_types = full.obs["cell_type"].astype(str).to_numpy()
    hidden = np.column_stack([kind == "atac_only", kind == "rna_only"])
    batches = full.obs[batch_key].astype(str).to_numpy()
    mv = multivi_metrics(
        full, split, cell_types=cell_types, batches=batches, seed=seed, hidden=hidden, max_epochs=max_epochs
    )
    fit = np.isin(split, ["train", "validation"])
    names = full.obs_names[fit]
    labels = cell_types[fit]
    clusters, _ = leiden_matched(mv.fit_latent, len(np.unique(labels)), seed=seed)
    out = scores_of(mv.fit_latent, clusters, obs.loc[names, "modality_source"].astype(str).to_numpy(), labels)
    held = mv.as_dict()
    out["test"] = {k: held[k] for k in TEST_KEYS if k in held}
    out["epochs"], out["train_seconds"] = held["epochs"], round(held["train_seconds"], 1)
    return out


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
    p.add_argument("--save", default=None, help="save the mosaic model to this file")
    p.add_argument("--mosaic-model", default=None, help="a mosaic model saved by --save: scored, not trained")
    p.add_argument("--multivi", action="store_true", help="also train MultiVI on the mosaic (needs scvi-tools)")
    p.add_argument("--multivi-max-epochs", type=int, default=None, help="MultiVI's epoch cap (default its own)")
    p.add_argument(
        "--hidden-only", action="store_true", help="with --mosaic-model: only the predictions of the hidden modalities"
    )
    args = p.parse_args(argv)
    full = md.read_h5mu(args.data)
    cell_types = full.obs["cell_type"].astype(str).to_numpy()
    split = stratified_split(cell_types, args.seed)
    mosaic = mosaic_of(full, cell_types, split, args.seed)
    if args.hidden_only:
        hidden = hidden_prediction_scores(DGD.load(args.mosaic_model), full, mosaic, args.seed)
        out = {"seed": args.seed, "hidden": hidden}
        print(json.dumps(out, indent=1))
        return out
    t0 = time.perf_counter()
    if args.mosaic_model:
        model = DGD.load(args.mosaic_model)
    else:
        model = DGD(mosaic, cell_type_key="cell_type", covariate_keys=args.batch_key)
        model.train(args.max_epochs, seed=args.seed, progress_bar=False)
    out = {"seed": args.seed, "train_seconds": round(time.perf_counter() - t0, 1), "epochs": int(model.state.epoch)}
    out["best_epoch"] = int(model.best_epoch)
    out["cells"] = {k: int((mosaic.obs["modality_source"] == k).sum()) for k in KINDS}
    if args.save:
        model.save(args.save, overwrite=True)
    names = model.obs_names[np.isfinite(model.get_latent_representation()).all(axis=1)]
    test, train = full[split == "test"].copy(), full[split == "train"].copy()
    models = {"mosaic": model}
    if args.paired_model:
        models["paired"] = DGD.load(args.paired_model)
    for name, m in models.items():
        out[name] = latent_scores(m, mosaic.obs, names.intersection(m.obs_names))
        held = heldout_metrics(m, test, train).as_dict()
        out[name]["test"] = {k: held[k] for k in TEST_KEYS}
    out["mosaic"]["hidden"] = hidden_prediction_scores(model, full, mosaic, args.seed)
    out.update(baseline_scores(full, mosaic.obs.loc[names], args.batch_key, args.seed))
    if args.multivi:
        kind = mosaic.obs["modality_source"].reindex(full.obs_names).astype(object).fillna("test").to_numpy()
        cap = args.multivi_max_epochs
        out["multivi"] = multivi_scores(full, split, mosaic.obs, kind, args.batch_key, args.seed, cap)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
