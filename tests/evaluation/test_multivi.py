import numpy as np
import pytest

from multidgd.evaluation import stratified_split
from multidgd.evaluation.multivi import leiden_matched
from multidgd.metrics import ari

from ..conftest import shared_file

pytest.importorskip("igraph")


def _blobs(k, n=60, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=20.0, size=(k, dim))
    labels = np.repeat(np.arange(k), n)
    return centres[labels] + rng.normal(size=(k * n, dim)), labels


def test_leiden_matched_recovers_separated_blobs():
    x, labels = _blobs(4)
    found, res = leiden_matched(x, 4, seed=0)
    assert len(np.unique(found)) == 4 and res > 0
    assert ari(labels, found) == pytest.approx(1.0)


def test_leiden_matched_reaches_a_larger_count_by_raising_the_resolution():
    x, _ = _blobs(3, n=150)
    found, res = leiden_matched(x, 9, seed=0)
    assert len(np.unique(found)) == 9 and res > 1.0
    with pytest.raises(ValueError, match="n_clusters"):
        leiden_matched(x, 0)


def test_multivi_metrics_on_bmmc():
    pytest.importorskip("scvi")
    import mudata as md

    from multidgd.evaluation.multivi import multivi_metrics

    m = md.read_h5mu(shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu"))
    cell_types = m.obs["cell_type"].astype(str).to_numpy()
    batches = m.obs["batch"].astype(str).to_numpy()
    split = stratified_split(cell_types, 0)
    out = multivi_metrics(m, split, cell_types=cell_types, batches=batches, seed=0, max_epochs=2)
    assert out.epochs == 2 and out.latent.shape == ((split == "train").sum(), 20)
    for key in ("rna_rmse", "rna_mae", "rna_from_atac_rmse"):
        assert getattr(out, key) > 0
    for key in ("atac_auprc", "atac_from_rna_auprc", "batch_1_minus_asw"):
        assert 0 < getattr(out, key) <= 2
    assert out.clusters == len(np.unique(cell_types[split == "train"])) and -1 <= out.ari <= 1
    # the metrics.json entries: every field but the latent, in order
    assert list(out.as_dict()) == [
        "version",
        "n_latent",
        "rna_rmse",
        "rna_mae",
        "atac_auprc",
        "atac_from_rna_auprc",
        "rna_from_atac_rmse",
        "rna_from_atac_mae",
        "rna_pearson",
        "rna_spearman",
        "atac_cell_auprc",
        "rna_from_atac_pearson",
        "rna_from_atac_spearman",
        "atac_from_rna_cell_auprc",
        "ari",
        "clusters",
        "leiden_resolution",
        "batch_1_minus_asw",
        "epochs",
        "train_seconds",
        "seconds_per_epoch",
    ]


def test_multivi_metrics_entries_without_batches():
    from multidgd.evaluation import MultiVIComparison, MultiVIMetrics

    values = dict.fromkeys(
        [
            "rna_rmse",
            "rna_mae",
            "atac_auprc",
            "atac_from_rna_auprc",
            "rna_from_atac_rmse",
            "rna_pearson",
            "rna_spearman",
            "atac_cell_auprc",
            "rna_from_atac_pearson",
            "rna_from_atac_spearman",
            "atac_from_rna_cell_auprc",
        ],
        0.5,
    )
    mv = MultiVIMetrics(
        version="1.4.2",
        n_latent=20,
        **values,
        rna_from_atac_mae=0.123456789,
        ari=0.2,
        clusters=5,
        leiden_resolution=0.75,
        batch_1_minus_asw=None,
        epochs=2,
        train_seconds=3.0,
        seconds_per_epoch=1.5,
        latent=np.zeros((3, 20)),
        fit_latent=np.zeros((4, 20)),
        batched=False,
    )
    assert "batch_1_minus_asw" not in mv.as_dict() and "latent" not in mv.as_dict()
    mv.batched = True
    assert mv.as_dict()["batch_1_minus_asw"] is None
    entries = MultiVIComparison(mv, ari_leiden=0.3).as_dict()
    assert list(entries) == ["multivi", "ari_leiden"] and entries["multivi"]["rna_from_atac_mae"] == 0.12346


def test_mosaic_layout_hides_the_fitted_cells_modalities():
    import mudata as md

    from multidgd.evaluation.multivi import _layout

    m = md.read_h5mu(shared_file("bmmc_neurips2021_starter", "bmmc_multiome_starter_500cells.h5mu"))
    split = stratified_split(m.obs["cell_type"].astype(str).to_numpy(), 0)
    hidden = np.zeros((m.n_obs, 2), dtype=bool)
    hidden[::3, 0] = True  # RNA hidden (ATAC only)
    hidden[1::3, 1] = True  # ATAC hidden (RNA only)
    batches = m.obs["batch"].astype(str).to_numpy()
    lay = _layout(m, split, batches, {"rna": "rna", "atac": "atac"}, hidden)
    n_fit = len(lay.fit)
    for j, mod in enumerate(("rna", "atac")):
        x = lay.mdata.mod[mod].X[:n_fit]
        sums = np.asarray(x.sum(axis=1)).ravel()
        original = np.asarray(m.mod[mod].X[lay.fit].sum(axis=1)).ravel()
        gone = hidden[lay.fit, j]
        assert (sums[gone] == 0).all() and np.allclose(sums[~gone], original[~gone])
        # the test copies are untouched by the mosaic: paired copy equals the data
        paired = lay.mdata.mod[mod].X[lay.where["paired"]]
        truth = np.asarray(m.mod[mod].X[lay.test].sum(axis=1)).ravel()
        assert np.allclose(np.asarray(paired.sum(axis=1)).ravel(), truth)
    kind = lay.mdata.obs["_modality"].to_numpy()
    expected = np.where(hidden[lay.fit, 0], "atac_only", np.where(hidden[lay.fit, 1], "rna_only", "paired"))
    assert (kind[:n_fit] == expected).all()
    assert (kind[lay.where["rna_only"]] == "rna_only").all() and (kind[lay.where["paired"]] == "paired").all()
