import numpy as np
import pandas as pd
import pytest

from multidgd.evaluation import read_split_csv, stratified_split


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
