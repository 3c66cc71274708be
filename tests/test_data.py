"""Reading training data: containers, layers, feature types, counts checks, labels and splits."""

import logging
import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from multidgd.data import gather_rows, make_validation_split, read_multiome

from .conftest import make_mudata


def test_mudata_input(mdata):
    d = read_multiome(mdata, cell_type_key="cell_type", covariate_keys=["batch"])
    assert d.n_cells == 160
    assert d.n_features == {"rna": 30, "atac": 60}
    np.testing.assert_allclose(d.library_size[:, 0], np.asarray(mdata["rna"].X.sum(1)).ravel())
    assert d.covariate_categories == [["b0", "b1"]]
    assert d.cell_type_categories == ["type0", "type1", "type2"]
    assert (np.array(d.cell_type_categories)[d.cell_type_codes] == mdata.obs["cell_type"].astype(str).to_numpy()).all()


def test_custom_modality_names_and_layer(mdata):
    rna, atac = mdata["rna"].copy(), mdata["atac"].copy()
    rna.layers["counts"] = rna.X.copy()
    atac.layers["counts"] = atac.X.copy()
    rna.X = sp.csr_matrix(np.log1p(rna.X.toarray()))  # X normalised, counts in the layer
    atac.X = sp.csr_matrix(np.log1p(atac.X.toarray()))
    m2 = md.MuData({"gex": rna, "peaks": atac})
    d = read_multiome(m2, rna_mod="gex", atac_mod="peaks", layer="counts")
    assert d.source_modality == {"rna": "gex", "atac": "peaks"}
    with pytest.raises(ValueError, match="non-integer values"):
        read_multiome(m2, rna_mod="gex", atac_mod="peaks")


def test_anndata_with_feature_types_equals_mudata(mdata):
    rna, atac = mdata["rna"], mdata["atac"]
    x = sp.hstack([rna.X, atac.X]).tocsr()
    var = pd.DataFrame(
        {"feature_types": ["Gene Expression"] * rna.n_vars + ["Peaks"] * atac.n_vars},
        index=list(rna.var_names) + list(atac.var_names),
    )
    adata = ad.AnnData(x, obs=mdata.obs.copy(), var=var)
    a = read_multiome(adata, cell_type_key="cell_type")
    m = read_multiome(mdata, cell_type_key="cell_type")
    for mod in ("rna", "atac"):
        assert (a.counts[mod] != m.counts[mod]).nnz == 0
        assert a.var_names[mod].equals(m.var_names[mod])
    # lower-case aliases work too
    adata.var["feature_types"] = ["gex"] * rna.n_vars + ["ATAC"] * atac.n_vars
    assert read_multiome(adata).n_features == {"rna": 30, "atac": 60}


def test_dense_input_equals_sparse(mdata):
    dense = mdata.copy()
    for mod in ("rna", "atac"):
        dense.mod[mod].X = np.asarray(dense.mod[mod].X.toarray())
    a, b = read_multiome(dense), read_multiome(mdata)
    for mod in ("rna", "atac"):
        assert sp.issparse(a.counts[mod])
        assert (a.counts[mod] != b.counts[mod]).nnz == 0


def test_input_not_modified(mdata):
    before = mdata["rna"].X.copy()
    read_multiome(mdata, covariate_keys=["batch"])
    assert (mdata["rna"].X != before).nnz == 0
    assert "multidgd" not in " ".join(mdata.obs.columns)


@pytest.mark.parametrize(
    "value,match",
    [
        (0.5, "non-integer values"),
        (-1.0, "negative values"),
        (np.nan, "NaN or infinite"),
        (np.inf, "NaN or infinite"),
    ],
)
def test_bad_count_values(mdata, value, match):
    x = mdata["atac"].X.toarray()
    x[3, 4] = value
    mdata.mod["atac"].X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match=match) as err:
        read_multiome(mdata)
    assert "raw integer counts" in str(err.value)
    assert "'atac'" in str(err.value)


def test_missing_modality_layer_and_key(mdata):
    with pytest.raises(
        ValueError, match=r"RNA modality 'gex' not in the MuData; available modalities: \['rna', 'atac'\]"
    ):
        read_multiome(mdata, rna_mod="gex")
    with pytest.raises(ValueError, match=r"layer 'counts' not in the layers of modality 'rna'; available: \[\]"):
        read_multiome(mdata, layer="counts")
    with pytest.raises(ValueError, match="obs key 'donor' not found; available obs columns"):
        read_multiome(mdata, covariate_keys=["donor"])
    with pytest.raises(ValueError, match="obs key 'celltype' not found"):
        read_multiome(mdata, cell_type_key="celltype")


def test_anndata_without_feature_types(mdata):
    with pytest.raises(ValueError, match="feature_types"):
        read_multiome(mdata["rna"])
    rna = mdata["rna"].copy()
    rna.var["feature_types"] = "Gene Expression"
    with pytest.raises(ValueError, match="no ATAC features"):
        read_multiome(rna)


def test_obs_names_differ_or_repeat(mdata):
    atac = mdata["atac"].copy()
    atac.obs_names = [f"other{i}" for i in range(atac.n_obs)]
    m2 = md.MuData({"rna": mdata["rna"].copy(), "atac": atac})
    with pytest.raises(ValueError, match="hold different cells: 160 only in 'rna'"):
        read_multiome(m2)
    rna = mdata["rna"].copy()
    atac = mdata["atac"].copy()
    names = list(rna.obs_names)
    names[1] = names[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # anndata and mudata warn about the repeat too
        rna.obs_names = names
        atac.obs_names = names
        m3 = md.MuData({"rna": rna, "atac": atac})
    with pytest.raises(ValueError, match="obs names repeat"):
        read_multiome(m3)


def test_same_cells_other_order_are_aligned(mdata):
    atac = mdata["atac"][::-1].copy()
    m2 = md.MuData({"rna": mdata["rna"].copy(), "atac": atac})
    d = read_multiome(m2)
    ref = read_multiome(mdata)
    assert (d.counts["atac"] != ref.counts["atac"]).nnz == 0


def test_missing_labels(mdata):
    obs = mdata.obs.copy()
    obs["batch"] = obs["batch"].astype(object)
    obs.iloc[5, obs.columns.get_loc("batch")] = np.nan
    mdata.obs = obs
    with pytest.raises(ValueError, match="obs column 'batch' has 1 missing values"):
        read_multiome(mdata, covariate_keys=["batch"])


def test_empty_cells_dropped_with_warning_or_error(mdata, caplog):
    x = mdata["atac"].X.toarray()
    x[[2, 7]] = 0
    mdata.mod["atac"].X = sp.csr_matrix(x)
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata)
    assert d.n_cells == 158
    assert not d.kept[[2, 7]].any()
    assert "dropping 2 of 160 cells" in caplog.text and "2 with no atac counts" in caplog.text
    with pytest.raises(ValueError, match="2 cells have zero counts"):
        read_multiome(mdata, drop_empty_cells=False)


def test_validation_split_is_seeded_and_stratified():
    strata = np.repeat([0, 1, 2], [100, 50, 10])
    a = make_validation_split(160, 0.1, strata=strata, seed=3)
    b = make_validation_split(160, 0.1, strata=strata, seed=3)
    c = make_validation_split(160, 0.1, strata=strata, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert [int(a[strata == g].sum()) for g in range(3)] == [10, 5, 1]


def _validation_split_before(n_cells, fraction, strata, seed):
    """make_validation_split as it was before the shared sampler (stratified_parts)."""
    rng = np.random.default_rng(seed)
    is_val = np.zeros(n_cells, dtype=bool)
    if fraction <= 0:
        return is_val
    groups = np.zeros(n_cells, dtype=np.int64) if strata is None else np.asarray(strata)
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        n_val = int(round(fraction * len(members)))
        if n_val:
            is_val[rng.choice(members, size=n_val, replace=False)] = True
    return is_val


@pytest.mark.parametrize("seed", [0, 1, 7, 2024])
def test_validation_split_draws_as_before(seed):
    rng = np.random.default_rng(100 + seed)
    strata = rng.integers(0, 6, 700)  # strata of 1-2 cells round to no validation cell: no draw
    strata[:3] = 9
    for fraction in (0.1, 0.25, 0.0):
        for s in (strata, None):
            new = make_validation_split(700, fraction, strata=s, seed=seed)
            np.testing.assert_array_equal(new, _validation_split_before(700, fraction, s, seed))


def test_stratified_parts():
    from multidgd.data import stratified_parts

    strata = np.array(["b", "a", "b", "a", "a", "b", "c"])
    parts = stratified_parts(strata, lambda n: (1, 1), seed=0)
    for g in "abc":
        got = sorted(parts[strata == g])
        assert got == sorted([0, 1, 2][: (strata == g).sum()])
    among = strata != "a"
    parts = stratified_parts(strata, lambda n: (1,), seed=0, among=among)
    assert (parts[~among] == -1).all() and sorted(parts[strata == "b"]) == [0, 1, 1]
    with pytest.raises(ValueError, match="draw"):
        stratified_parts(strata, lambda n: (1,), seed=0, draw="shuffle")


def test_user_split(mdata):
    obs = mdata.obs.copy()
    obs["split"] = ["train"] * 120 + ["val"] * 20 + ["test"] * 20
    mdata.obs = obs
    d = read_multiome(mdata, split_key="split")
    assert (d.split == "validation").sum() == 20
    obs["split"] = ["train"] * 150 + ["holdout"] * 10
    mdata.obs = obs
    with pytest.raises(ValueError, match=r"values \['holdout'\]; allowed: train, validation"):
        read_multiome(mdata, split_key="split")


def test_gather_rows_matches_dense():
    x = sp.random(20, 15, density=0.2, format="csr", random_state=0, dtype=np.float32)
    rows = np.array([4, 0, 19, 4])
    r, c, v = gather_rows(x, rows)
    dense = torch.zeros(4, 15)
    dense[r, c] = v
    np.testing.assert_array_equal(dense.numpy(), x[rows].toarray())


def test_wrong_type():
    with pytest.raises(TypeError, match="expected a MuData or an AnnData"):
        read_multiome(np.zeros((3, 3)))


def test_make_mudata_builder():
    m = make_mudata(n_cells=10)
    assert m["rna"].shape == (10, 30)


# ----------------------------------------------------------------------------- bad data: fixed, warned or refused
def matrix_with_duplicates(x: sp.spmatrix, fmt: str = "csr") -> tuple[sp.spmatrix, np.ndarray]:
    """``x`` with 3 extra stored entries at positions already stored (2 in row 0, 1 in row 5).

    Returns the matrix in format ``fmt`` (duplicates kept) and the dense sum it stands for.
    """
    coo = sp.coo_matrix(x)
    first0 = coo.col[coo.row == 0][0]
    first5 = coo.col[coo.row == 5][0]
    rows = np.r_[coo.row, 0, 0, 5]
    cols = np.r_[coo.col, first0, first0, first5]
    vals = np.r_[coo.data, 2, 1, 4].astype(x.dtype)
    expected = x.toarray()
    expected[0, first0] += 3
    expected[5, first5] += 4
    if fmt == "coo":
        return sp.coo_matrix((vals, (rows, cols)), shape=x.shape), expected
    major, minor, n = (rows, cols, x.shape[0]) if fmt == "csr" else (cols, rows, x.shape[1])
    order = np.argsort(major, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(major, minlength=n))]
    kind = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
    return kind((vals[order], minor[order], indptr), shape=x.shape), expected


def _arrays(x) -> list[np.ndarray]:
    """Copies of the arrays that make up a sparse matrix, to check that it is left unchanged."""
    names = ("data", "indices", "indptr") if x.format in ("csr", "csc") else ("data", "row", "col")
    return [np.array(getattr(x, n), copy=True) for n in names]


def _unchanged(x, before: list[np.ndarray]) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(_arrays(x), before, strict=True))


@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_duplicate_entries_are_summed_with_warning(mdata, caplog, fmt):
    x, expected = matrix_with_duplicates(mdata["rna"].X, fmt)
    assert x.nnz == mdata["rna"].X.nnz + 3
    mdata.mod["rna"].X = x
    before = _arrays(x)
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata)
    np.testing.assert_array_equal(d.counts["rna"].toarray(), expected)
    assert d.counts["rna"].has_canonical_format
    assert d.counts["rna"].nnz == (expected != 0).sum()
    np.testing.assert_allclose(d.library_size[:, 0], expected.sum(1))
    assert "modality 'rna' (X): 3 stored entries repeat a (cell, feature) position already stored, in 2 cells" in (
        caplog.text
    )
    assert "X.sum_duplicates()" in caplog.text
    assert mdata["rna"].X is x and _unchanged(x, before)  # the user's matrix is not merged in place


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_to_count_csr_sums_duplicates(mdata, caplog, fmt):
    from multidgd.data import to_count_csr

    x, expected = matrix_with_duplicates(mdata["rna"].X.astype(np.int64), fmt)  # int counts: converted
    before = _arrays(x)
    with caplog.at_level(logging.WARNING):
        out = to_count_csr(x, "rna", None)
    assert out.dtype == np.float32 and out.has_canonical_format
    np.testing.assert_array_equal(out.toarray(), expected)
    assert "3 stored entries repeat a (cell, feature) position already stored, in 2 cells" in caplog.text
    assert _unchanged(x, before)


def test_duplicate_entries_in_a_layer_name_it(mdata, caplog):
    x, expected = matrix_with_duplicates(mdata["atac"].X)
    mdata.mod["atac"].layers["counts"] = x
    mdata.mod["rna"].layers["counts"] = mdata["rna"].X.copy()
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata, layer="counts")
    np.testing.assert_array_equal(d.counts["atac"].toarray(), expected)
    assert "modality 'atac' (layer 'counts'): 3 stored entries" in caplog.text
    assert "layers['counts'].sum_duplicates()" in caplog.text


def test_duplicate_entries_of_new_cells_are_summed(mdata, caplog):
    from multidgd.query import read_query

    x, expected = matrix_with_duplicates(mdata["rna"].X)
    new = md.MuData({"rna": ad.AnnData(x, obs=mdata["rna"].obs.copy(), var=mdata["rna"].var.copy())})
    before = _arrays(x)
    with caplog.at_level(logging.WARNING):
        q = read_query(
            new,
            var_names={"rna": mdata["rna"].var_names, "atac": mdata["atac"].var_names},
            modality_names={"rna": "rna", "atac": "atac"},
            covariate_keys=[],
        )
    np.testing.assert_array_equal(q.counts["rna"].toarray(), expected)
    np.testing.assert_allclose(q.library_size[:, 0], expected.sum(1))
    assert "3 stored entries repeat a (cell, feature) position already stored, in 2 cells" in caplog.text
    assert _unchanged(new["rna"].X, before)


def test_canonical_input_reads_as_before_and_is_not_changed(mdata, caplog):
    x = mdata["rna"].X
    x.data[[0, 5]] = 0  # explicit zeros: removed from the copy read, kept in the input
    x_before = _arrays(x)
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata)
    assert "sum_duplicates" not in caplog.text and "2**24" not in caplog.text
    assert _unchanged(x, x_before)
    assert d.counts["rna"].nnz == x.nnz - 2
    np.testing.assert_array_equal(d.counts["rna"].toarray(), x.toarray())


def test_counts_above_float32_exact_range_warn(mdata, caplog):
    x = mdata["rna"].X.toarray().astype(np.float64)
    x[3, 4] = 2**24 + 3  # not exact in float32
    x[7, 2] = 3e7
    mdata.mod["rna"].X = sp.csr_matrix(x)
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata)
    assert "modality 'rna' (X): 2 counts exceed 2**24 = 16777216 (largest 30000000)" in caplog.text
    assert d.counts["rna"][3, 4] == np.float32(2**24 + 3) and d.counts["rna"].dtype == np.float32
    assert mdata["rna"].X[3, 4] == 2**24 + 3  # the input keeps its float64 value


def _with_obs_column(mdata, name, values):
    obs = mdata.obs.copy()
    obs[name] = values
    mdata.obs = obs
    return obs.copy()


@pytest.mark.parametrize("argument", ["covariate_keys", "cell_type_key"])
def test_continuous_label_column_is_refused(mdata, argument):
    rng = np.random.default_rng(0)
    obs = _with_obs_column(mdata, "age", rng.normal(40, 10, 160))
    x = mdata["atac"].X.toarray()
    x[0, 0] = 0.5  # bad counts too: the label column is refused first, before counts are read
    mdata.mod["atac"].X = sp.csr_matrix(x)
    kw = {"covariate_keys": ["age"]} if argument == "covariate_keys" else {"cell_type_key": "age"}
    with pytest.raises(ValueError) as err:
        read_multiome(mdata, **kw)
    message = str(err.value)
    assert message.startswith(f"{argument}='age': obs column 'age' holds numbers (float64) with 160 distinct values")
    assert "pd.cut(obs['age'], bins=5)" in message and "astype('category')" in message
    pd.testing.assert_frame_equal(mdata.obs, obs)


@pytest.mark.parametrize(
    "values,n_distinct",
    [
        (np.arange(160), 160),  # integers, one per cell
        (np.arange(160) % 60, 60),  # integers, more than MAX_NUMERIC_CLASSES
        (np.arange(160) % 60 + 0.5, 60),  # floats
        (pd.array(np.arange(160) % 81, dtype="Int64"), 81),  # more than half the cells
        ((np.arange(160) % 55).astype(float).astype(object), 55),  # numbers in an object column
    ],
)
def test_numeric_label_column_with_many_values_is_refused(mdata, values, n_distinct):
    _with_obs_column(mdata, "n", values)
    with pytest.raises(ValueError, match=f"covariate_keys='n': .* with {n_distinct} distinct values in 160 cells"):
        read_multiome(mdata, covariate_keys=["n"])


def test_class_coded_label_columns_are_accepted(mdata, caplog):
    _with_obs_column(mdata, "donor", np.arange(160) % 3)  # integer class codes
    _with_obs_column(mdata, "lane", (np.arange(160) % 4).astype(float))  # float class codes
    _with_obs_column(mdata, "age", pd.Categorical(np.round(np.linspace(20, 80, 160), 1)))  # explicitly categorical
    _with_obs_column(mdata, "flag", np.arange(160) % 2 == 0)
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata, covariate_keys=["donor", "lane", "flag"], cell_type_key="age")
    assert d.covariate_categories[:2] == [["0", "1", "2"], ["0.0", "1.0", "2.0", "3.0"]]
    assert len(d.cell_type_categories) == 160
    assert "cell_type_key='age': 160 of 160 classes have fewer than 3 cells" in caplog.text
    assert "covariate_keys" not in caplog.text


def test_small_classes():
    from multidgd.data import MIN_CLASS_CELLS, small_classes

    codes = np.array([0, 0, 0, 1, 2, 2, -1, -1, -1])
    assert MIN_CLASS_CELLS == 3
    assert small_classes(codes, ["a", "b", "c", "d"]) == {"b": 1, "c": 2, "d": 0}
    assert small_classes(codes, ["a", "b", "c", "d"], minimum=2) == {"b": 1, "d": 0}
    assert small_classes(codes, ["a", "b", "c"], minimum=1) == {}
    singletons = np.arange(5)
    assert len(small_classes(singletons, list("abcde"), 2)) == 5  # every class one cell: no ARI


def test_small_classes_are_warned_about(mdata, caplog):
    batch = mdata.obs["batch"].astype(str).to_numpy().copy()
    batch[[0]] = "rare"
    batch[[1, 2]] = "scarce"
    _with_obs_column(mdata, "batch", batch)
    cell_type = mdata.obs["cell_type"].astype(str).to_numpy().copy()
    cell_type[4] = "unique"
    obs = _with_obs_column(mdata, "cell_type", cell_type)
    with caplog.at_level(logging.WARNING):
        d = read_multiome(mdata, covariate_keys=["batch"], cell_type_key="cell_type")
    assert (
        "covariate_keys='batch': 2 of 4 classes have fewer than 3 cells: 'rare' (1 cell), 'scarce' (2 cells)"
        in caplog.text
    )
    assert "cell_type_key='cell_type': 1 of 4 classes have fewer than 3 cells: 'unique' (1 cell)" in caplog.text
    assert d.covariate_categories == [["b0", "b1", "rare", "scarce"]]
    pd.testing.assert_frame_equal(mdata.obs, obs)
