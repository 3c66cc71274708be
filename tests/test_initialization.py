import numpy as np
import scipy.sparse as sp

from multidgd.initialization import _centred_svd, _modality_scores, kmeans_centres, spectral_embedding


def test_centred_svd_equals_dense_pca():
    x = sp.random(60, 25, density=0.3, format="csr", random_state=1)
    scores, directions = _centred_svd(x, 4, seed=0)
    dense = x.toarray() - x.toarray().mean(0)
    u, s, _ = np.linalg.svd(dense, full_matrices=False)
    ref = u[:, :4] * s[:4]
    np.testing.assert_allclose(dense @ directions.T, scores, atol=1e-8)  # scores = projections
    for j in range(4):  # equal up to the sign of each component
        sign = np.sign(scores[:, j] @ ref[:, j])
        np.testing.assert_allclose(sign * scores[:, j], ref[:, j], atol=1e-8)


def test_spectral_embedding_separates_groups():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1], 50)
    profiles = rng.gamma(0.5, 1.0, (2, 40))
    x = sp.csr_matrix(rng.poisson(profiles[groups] * 3).astype(np.float32))
    y = sp.csr_matrix(rng.poisson(profiles[::-1][groups] * 3).astype(np.float32))
    emb = spectral_embedding({"rna": x, "atac": y}, np.arange(100), 5, radius=2.0)
    assert emb.shape == (100, 5) and emb.dtype == np.float32
    assert np.quantile(np.linalg.norm(emb, axis=1), 0.95) <= 1.0 + 1e-5
    # the first component splits the two groups
    first = emb[:, 0]
    assert min((first[groups == 0] > 0).mean(), (first[groups == 0] < 0).mean()) < 0.05
    assert np.sign(np.median(first[groups == 0])) != np.sign(np.median(first[groups == 1]))


def test_kmeans_centres_count():
    pts = np.random.default_rng(0).standard_normal((10, 3))
    assert kmeans_centres(pts, 4).shape == (4, 3)
    assert kmeans_centres(pts, 15).shape == (15, 3)


def test_subset_fit_projects_all_cells_onto_the_same_components():
    from multidgd.datasets import synthetic

    x = synthetic(3000, 300, 50, n_clusters=4, n_batches=1, marker_sd=2.0, seed=3).mod["rna"].X.tocsr()
    rows = np.arange(3000)[::-1]  # any order of rows
    full = _modality_scores(x, rows, 3, seed=0, max_fit_cells=10**6)
    for fit_cells, least in ((2999, 0.9999), (2000, 0.95)):
        sub = _modality_scores(x, rows, 3, seed=0, max_fit_cells=fit_cells, chunk=700)
        assert sub.shape == full.shape == (3000, 3)
        # components fitted on a subset, all cells projected: they span what a fit on all spans
        design = np.c_[sub, np.ones(3000)]
        coef, *_ = np.linalg.lstsq(design, full, rcond=None)
        r2 = 1 - (full - design @ coef).var(axis=0) / full.var(axis=0)
        assert np.all(r2 > least), (fit_cells, r2)


def test_k_is_chosen_from_well_separated_clusters():
    from multidgd import DGD, ModelConfig

    from .conftest import make_mudata

    data = make_mudata(n_cells=300, n_genes=60, n_peaks=90, n_types=3, n_batches=1, seed=2)
    for m in data.mod.values():  # strongly separated types: each has its own block of features
        x = m.X.toarray()
        t = data.obs["cell_type"].cat.codes.to_numpy()
        width = m.n_vars // 3
        for k in range(3):
            x[np.ix_(t == k, np.arange(k * width, (k + 1) * width))] += 20
        m.X = sp.csr_matrix(x)
    model = DGD(data)
    k = model.n_components
    assert k >= 3 and model.config.n_components == k  # every type found (Leiden at resolution 1 may split one)
    assert model.n_components_choice.startswith(f"K = {k} chosen from the data: Leiden clusters")
    # the same count computed directly: clusters of at least 1 % of the cells on the start's 15-NN graph
    import anndata as ad
    import scanpy as sc

    emb = spectral_embedding(model.data.counts, np.arange(300), 20, radius=1.0, groups=model.data.covariate_codes)
    a = ad.AnnData(obs={"i": np.arange(300)})
    a.obsm["e"] = emb
    sc.pp.neighbors(a, use_rep="e", n_neighbors=15, random_state=0)
    sc.tl.leiden(a, resolution=1.0, flavor="igraph", n_iterations=2, directed=False, random_state=0)
    assert k == int((np.bincount(a.obs["leiden"].astype(int)) >= 3).sum())
    given = DGD(data, config=ModelConfig(n_components=5))
    assert given.n_components == 5 and given.n_components_choice is None
    typed = DGD(data, cell_type_key="cell_type")
    assert typed.n_components == 3 and typed.n_components_choice is None


def test_clip_norms_moves_only_the_farthest_rows_in():
    from multidgd.initialization import clip_norms

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    x[:3] *= 50  # outliers
    out = clip_norms(x, 0.9)
    norms, new = np.linalg.norm(x, axis=1), np.linalg.norm(out, axis=1)
    limit = np.quantile(norms, 0.9)
    far = norms > limit
    assert out.dtype == x.dtype and far.sum() == 20
    np.testing.assert_array_equal(out[~far], x[~far])
    np.testing.assert_allclose(new[far], limit, rtol=1e-5)
    cos = (out[far] * x[far]).sum(1) / (new[far] * norms[far])
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)  # same direction
    np.testing.assert_array_equal(clip_norms(x, 1.0), x)


def test_clipped_start_gives_outliers_no_component_of_their_own():
    # three clusters of 100 cells and 4 far outliers; k-means with K = 3 on the raw points
    # spends centres on outliers, on the clipped points it finds the clusters
    from multidgd.initialization import clip_norms

    rng = np.random.default_rng(1)
    centres = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    x = np.vstack([c + 0.05 * rng.normal(size=(100, 3)) for c in centres] + [rng.normal(size=(4, 3)) * 40])
    x = x.astype(np.float32)

    def sizes(points):
        cent = kmeans_centres(points, 3, seed=0)
        lab = ((x[:, None] - cent[None]) ** 2).sum(-1).argmin(1)
        return np.sort(np.bincount(lab, minlength=3))

    assert sizes(x)[0] < 10
    assert (sizes(clip_norms(x, 0.95)) >= 100).all()
