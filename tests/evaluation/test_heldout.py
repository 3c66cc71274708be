import numpy as np
import pandas as pd
import pytest

from multidgd.evaluation import read_split_csv, stratified_split, subsample_training


def test_stratified_split_proportions_and_seed():
    labels = np.repeat(["a", "b", "c"], [100, 50, 7])
    s = stratified_split(labels, seed=0)
    for g, n in (("a", 100), ("b", 50), ("c", 7)):
        part = s[labels == g]
        assert (part == "train").sum() == round(0.8 * n)
        assert (part == "validation").sum() == round(0.1 * n)
        assert (part == "test").sum() == n - round(0.8 * n) - round(0.1 * n)
    np.testing.assert_array_equal(s, stratified_split(labels, seed=0))
    assert (s != stratified_split(labels, seed=1)).any()
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split(labels, 0, fractions=(0.5, 0.1, 0.1))


def test_read_split_csv(tmp_path):
    names = pd.Index(["c1", "c2", "c3"])
    path = tmp_path / "s.csv"
    pd.DataFrame({"obs_name": ["c3", "c1", "c2"], "split": ["test", "train", "val"]}).to_csv(path, index=False)
    np.testing.assert_array_equal(read_split_csv(path, names), ["train", "validation", "test"])
    pd.DataFrame({"obs_name": ["c1", "c2"], "split": ["train", "train"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="1 cells of the data have no split"):
        read_split_csv(path, names)
    pd.DataFrame({"obs_name": ["c1", "c2", "c3"], "split": ["train", "dev", "test"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="'dev'"):
        read_split_csv(path, names)
    pd.DataFrame({"cell": ["c1"], "split": ["train"]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="obs_name"):
        read_split_csv(path, names)


def _split_before(labels, seed, fractions=(0.8, 0.1, 0.1)):
    """stratified_split as it was before the shared sampler (data.stratified_parts)."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(str)
    split = np.empty(len(labels), dtype=object)
    for g in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == g))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        split[members[:n_train]] = "train"
        split[members[n_train : n_train + n_val]] = "validation"
        split[members[n_train + n_val :]] = "test"
    return split


def _subsample_before(split, cell_types, f, seed):
    """Subsample as run_evaluation did before the shared sampler."""
    rng = np.random.default_rng(seed)
    sub = split.copy()
    for g in np.unique(cell_types):
        members = np.flatnonzero((split == "train") & (cell_types == g))
        n_keep = max(1, int(round(f * len(members))))
        sub[rng.permutation(members)[n_keep:]] = "unused"
    return sub


@pytest.mark.parametrize("seed", [0, 3, 37, 8790])
def test_splits_draw_as_before(seed):
    rng = np.random.default_rng(seed + 1)
    labels = rng.choice(["t0", "t1", "t2", "t3", "rare"], size=600, p=[0.4, 0.3, 0.2, 0.095, 0.005])
    labels[:2] = "single"  # strata too small for every part
    labels[2] = "one"
    split = stratified_split(labels, seed)
    np.testing.assert_array_equal(split, _split_before(labels, seed))
    assert split.dtype == object
    np.testing.assert_array_equal(
        stratified_split(labels, seed, fractions=(0.5, 0.5, 0.0)), _split_before(labels, seed, (0.5, 0.5, 0.0))
    )
    # a type with no training cell still takes its turn in the draws
    labels_with_test_only = labels.copy()
    labels_with_test_only[np.flatnonzero(split == "test")[:4]] = "test_only"
    for f in (0.1, 0.5, 0.99):
        np.testing.assert_array_equal(
            subsample_training(split, labels_with_test_only, f, seed),
            _subsample_before(split, labels_with_test_only, f, seed),
        )


def test_subsample_training_keeps_a_stratified_fraction():
    labels = np.repeat(["a", "b"], [100, 10])
    split = stratified_split(labels, 0)
    sub = subsample_training(split, labels, 0.5, seed=0)
    assert ((sub == "unused") <= (split == "train")).all()
    assert [(sub[labels == g] == "train").sum() for g in "ab"] == [40, 4]
    np.testing.assert_array_equal(sub[split != "train"], split[split != "train"])


def test_result_rows_as_written_to_metrics_json():
    from multidgd.evaluation import FractionRow, HeldoutMetrics, HoldoutBatchResult

    row = FractionRow(train_fraction=0.25, cells_train=100, loss_ratio=1.0123456789)
    assert row.as_dict() == {
        "train_fraction": 0.25,
        "cells_train": 100,
        "loss_ratio": 1.01235,
        "loss_ratio_rna": 1.0,
        "loss_ratio_atac": 1.0,
    }
    assert list(row.as_dict()) == ["train_fraction", "cells_train", "loss_ratio", "loss_ratio_rna", "loss_ratio_atac"]
    values = dict.fromkeys(
        [
            "embed_seconds",
            "rna_rmse",
            "rna_mae",
            "atac_auprc",
            "nll_rna",
            "nll_atac",
            "baseline_rna_rmse",
            "baseline_rna_mae",
            "baseline_atac_auprc",
            "atac_from_rna_auprc",
            "rna_from_atac_rmse",
            "rna_from_atac_mae",
            "rna_pearson",
            "rna_spearman",
            "atac_cell_auprc",
            "rna_from_atac_pearson",
            "rna_from_atac_spearman",
            "atac_from_rna_cell_auprc",
            "baseline_rna_pearson",
            "baseline_rna_spearman",
            "baseline_atac_cell_auprc",
        ],
        0.5,
    )
    held = HeldoutMetrics(test_cells=3, **values, nll=pd.DataFrame(), embedding=None)
    assert list(held.as_dict()) == ["test_cells", *values]
    holdout = HoldoutBatchResult("b1", 7, 1.01, 1.02, figure=None)
    assert holdout.as_dict() == {
        "holdout_batch": "b1",
        "holdout_test_cells": 7,
        "holdout_loss_ratio_naive": 1.01,
        "holdout_loss_ratio_learned": 1.02,
    }
