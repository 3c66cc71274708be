"""Reading files: global options of other packages are left as found; bad counts in backed files."""

from __future__ import annotations

import logging
import re
import warnings

import mudata as md
import numpy as np
import pytest
import scipy.sparse as sp
from mudata._core.config import OPTIONS  # the global options of mudata, to check them

from multidgd.data import read_multiome
from multidgd.io import mudata_options, read, write

from .conftest import make_mudata
from .test_data import matrix_with_duplicates


@pytest.fixture
def pull_on_update_set_to():
    """Set mudata's pull_on_update for one test, and put back the suite's value afterwards."""
    suite = OPTIONS["pull_on_update"]
    yield lambda value: md.set_options(pull_on_update=value)
    md.set_options(pull_on_update=suite)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
@pytest.mark.parametrize("value", [None, True])
@pytest.mark.parametrize("kind", ["h5mu", "h5mu-backed", "zarr", "zarr-backed", "h5ad"])
def test_read_leaves_mudata_options_as_found(tmp_path, pull_on_update_set_to, kind, value):
    m = make_mudata(n_cells=20)
    suffix, backed = kind.split("-")[0], kind.endswith("backed")
    path = tmp_path / f"d.{suffix}"
    if suffix == "h5mu":
        m.write(path)
    elif suffix == "zarr":
        m.write_zarr(path)
    else:
        m["rna"].write_h5ad(path)
    pull_on_update_set_to(value)
    before = dict(OPTIONS)
    data = read(path, backed=backed)
    assert dict(OPTIONS) == before
    assert data.n_obs == 20
    if suffix != "h5ad":  # modalities' obs columns were not pulled into the MuData's obs
        assert list(data.obs.columns) == ["cell_type", "batch"]


@pytest.mark.parametrize("value", [None, True])
def test_write_leaves_mudata_options_as_found(tmp_path, pull_on_update_set_to, value):
    m = make_mudata(n_cells=20)
    pull_on_update_set_to(value)
    before = dict(OPTIONS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # mudata warns when it updates with pull_on_update unset
        path = write(m, tmp_path / "d")
    assert dict(OPTIONS) == before
    assert path.name == "d.h5mu" and list(m.obs.columns) == ["cell_type", "batch"]


def test_read_restores_mudata_options_when_it_fails(tmp_path, pull_on_update_set_to):
    path = tmp_path / "broken.h5mu"
    path.write_bytes(b"not an HDF5 file")
    pull_on_update_set_to(True)
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot be read as a MuData (.h5mu)")):
        read(path)
    assert OPTIONS["pull_on_update"] is True


def test_mudata_options_context(pull_on_update_set_to):
    pull_on_update_set_to(None)
    with mudata_options(pull_on_update=False):
        assert OPTIONS["pull_on_update"] is False
    assert OPTIONS["pull_on_update"] is None
    with pytest.raises(RuntimeError), mudata_options(pull_on_update=True):
        raise RuntimeError
    assert OPTIONS["pull_on_update"] is None


def test_backed_file_with_duplicate_entries_is_read_summed(tmp_path, caplog):
    m = make_mudata(n_cells=40, seed=1)
    x, expected = matrix_with_duplicates(m["rna"].X)
    m.mod["rna"].X = x
    path = tmp_path / "dup.h5mu"
    m.write(path)
    raw = path.read_bytes()
    with caplog.at_level(logging.WARNING):
        d = read_multiome(read(path, backed=True), cell_type_key="cell_type")
    warnings = [r.getMessage() for r in caplog.records if "sum_duplicates" in r.getMessage()]
    assert len(warnings) == 1  # once for the file, not once per block of rows
    assert (
        "modality 'rna' (X): 3 stored entries repeat a (cell, feature) position already stored, in 2 cells"
        in (warnings[0])
    )
    assert "each time rows are read from the file (the file is not changed)" in warnings[0]
    rows = np.array([5, 0, 7, 0])
    np.testing.assert_array_equal(d.counts["rna"][rows].toarray(), expected[rows])
    assert d.counts["rna"][rows].has_canonical_format
    np.testing.assert_allclose(d.library_size[:, 0], expected.sum(1))
    in_memory = read_multiome(read(path), cell_type_key="cell_type")
    np.testing.assert_array_equal(d.counts["rna"][np.arange(40)].toarray(), in_memory.counts["rna"].toarray())
    assert path.read_bytes() == raw


def _write_10x_h5(path, x, barcodes, ids, names, types):
    """A Cell Ranger (ARC) feature-barcode matrix: features x cells in CSC, as 10x writes it."""
    import h5py

    m = sp.csc_matrix(np.asarray(x).T)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices.astype(np.int64), m.indptr
        g["shape"] = np.array(m.shape, dtype=np.int32)
        feats = g.create_group("features")
        feats["id"], feats["name"] = np.array(ids, dtype="S"), np.array(names, dtype="S")
        feats["feature_type"] = np.array(types, dtype="S")
        feats["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])


def test_10x_arc_h5_is_read_and_trains(tmp_path):
    from multidgd import DGD, ModelConfig
    from multidgd.io import read

    from .conftest import make_mudata

    m = make_mudata(n_cells=160)
    x = sp.hstack([m["rna"].X, m["atac"].X]).toarray()
    genes = [f"G{j % 29}" for j in range(30)]  # two genes share a symbol, as in real annotations
    peaks = list(m["atac"].var_names)
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x_h5(path, x, list(m.obs_names), [f"ENSG{j}" for j in range(30)] + peaks, genes + peaks,
                  ["Gene Expression"] * 30 + ["Peaks"] * 60)  # fmt: skip
    adata = read(path)
    assert adata.shape == (160, 90) and adata.var_names.is_unique
    np.testing.assert_array_equal(adata.X.toarray(), x)
    assert list(adata.var["feature_types"].unique()) == ["Gene Expression", "Peaks"]
    model = DGD(adata, config=ModelConfig(hidden_dim=8, n_components=2))
    assert model.var_names["rna"].size == 30 and model.var_names["atac"].size == 60
    with pytest.raises(ValueError, match="cannot be read backed"):
        read(path, backed=True)
