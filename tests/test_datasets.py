"""The synthetic data generator: Poisson counts, shape, sparsity, library sizes and structure."""

import numpy as np
import pytest
import scipy.sparse as sp

from multidgd.datasets import sample_counts, synthetic


def test_sample_counts_are_poisson_with_each_cells_library():
    rng = np.random.default_rng(1)
    n = 4000
    library = np.r_[np.full(n // 2, 5.0), np.full(n // 2, 50.0)]
    p = np.full((2, 100), 0.01)
    group = np.r_[np.zeros(n // 4, int), np.ones(n // 4, int), np.zeros(n // 4, int), np.ones(n // 4, int)]
    x = sample_counts(p, group, library, rng, block_cells=700)
    assert sp.isspmatrix_csr(x) and x.has_canonical_format and x.shape == (n, 100)
    for rows, lam in ((slice(0, n // 2), 0.05), (slice(n // 2, n), 0.5)):
        block = x[rows].toarray()
        # Poisson(lam): mean lam, P(0) = exp(-lam), variance lam
        assert block.mean() == pytest.approx(lam, rel=0.03)
        assert (block == 0).mean() == pytest.approx(np.exp(-lam), abs=0.005)
        assert block.var() == pytest.approx(lam, rel=0.05)


def test_synthetic_shape_sparsity_libraries_and_seed():
    m = synthetic(800, 300, 2000, n_clusters=4, n_batches=2, rna_density=0.08, atac_density=0.02, seed=3)
    rna, atac = m.mod["rna"].X, m.mod["atac"].X
    assert rna.shape == (800, 300) and atac.shape == (800, 2000)
    for x, density in ((rna, 0.08), (atac, 0.02)):
        assert sp.isspmatrix_csr(x) and x.dtype == np.float32
        assert np.all(x.data == np.round(x.data)) and x.data.min() >= 1
        assert x.nnz / np.prod(x.shape) == pytest.approx(density, rel=0.15)
        log_lib = np.log(np.asarray(x.sum(axis=1)).ravel())
        assert log_lib.std() == pytest.approx(0.6, abs=0.1)
    assert set(m.obs["cell_type"]) == {"c0", "c1", "c2", "c3"} and set(m.obs["batch"]) == {"b0", "b1"}
    assert m.mod["atac"].var_names[0] == "chr1:10000-10500"
    again = synthetic(800, 300, 2000, n_clusters=4, n_batches=2, rna_density=0.08, atac_density=0.02, seed=3)
    assert (again.mod["atac"].X != atac).nnz == 0 and (again.mod["rna"].X != rna).nnz == 0
    other = synthetic(800, 300, 2000, n_clusters=4, n_batches=2, rna_density=0.08, atac_density=0.02, seed=4)
    assert (other.mod["rna"].X != rna).nnz > 0


def test_synthetic_clusters_are_recoverable_from_either_modality():
    from sklearn.cluster import KMeans
    from sklearn.decomposition import TruncatedSVD
    from sklearn.metrics import adjusted_rand_score

    m = synthetic(600, 1500, 8000, n_clusters=3, n_batches=1, seed=0)
    labels = m.obs["cell_type"].to_numpy()
    for mod in ("rna", "atac"):
        x = m.mod[mod].X
        x = sp.diags(1e4 / np.asarray(x.sum(axis=1)).ravel()) @ x
        x.data = np.log1p(x.data)
        z = TruncatedSVD(10, random_state=0).fit_transform(x)[:, 1:]  # the first follows the mean profile
        found = KMeans(3, n_init=10, random_state=0).fit_predict(z)
        assert adjusted_rand_score(labels, found) > 0.9


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="n_cells"):
        synthetic(0, 10, 10)
    with pytest.raises(ValueError, match="densities"):
        synthetic(50, 10, 10, atac_density=1.5)
    with pytest.raises(ValueError, match="n_clusters"):
        synthetic(5, 10, 10, n_clusters=4, n_batches=2)
