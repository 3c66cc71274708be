"""JASPAR motifs, motif scans (against brute force) and the motif matrix of peaks."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multidgd.analysis.motifs import Motif, motif_matrix, motif_scores, motifs_for_gene, read_jaspar, scan_motifs

from ..conftest import SHARED_DATA

# ----------------------------------------------------------------------------- motifs


def test_read_jaspar_bundled_and_dimers():
    motifs = read_jaspar("JASPAR2024")
    assert len(motifs) == 879
    first = motifs[0]
    assert (first.matrix_id, first.name, first.width) == ("MA0004.1", "Arnt", 6)
    np.testing.assert_array_equal(first.counts[0], [4, 19, 0, 0, 0, 0])
    np.testing.assert_array_equal(first.counts[:, 0], [4, 16, 0, 0])
    # log-odds with 0.8 pseudocounts split over the bases, column 0: A = 4 of 20
    assert first.pwm()[0, 0] == pytest.approx(np.log2((4 + 0.2) / 20.8 / 0.25))
    shared = SHARED_DATA / "motifs" / "JASPAR2024_CORE_vertebrates_latest.jaspar"
    if shared.exists():
        assert [m.matrix_id for m in read_jaspar(shared)] == [m.matrix_id for m in motifs]

    names = {m.name for m in motifs_for_gene(motifs, "jun")}
    assert {"JUN", "FOSB::JUN", "BATF::JUN"} <= names
    assert all("JUN" in m.name.upper().split("::") for m in motifs_for_gene(motifs, "JUN"))
    assert "JUNB" not in names
    assert {m.name for m in motifs_for_gene(motifs, "arnt")} >= {"Arnt", "Ahr::Arnt", "ARNT::HIF1A"}
    assert motifs_for_gene(motifs, "NOT_A_TF") == []


def test_read_jaspar_plain_formats(tmp_path):
    path = tmp_path / "m.txt"
    path.write_text(">M1 Foo(var.2)\n1 2\n3 4\n5 6\n7 8\n\n>M2\nT 0 1 1\nG 2 2 2\nC 3 0 3\nA 4 4 4\n")
    m1, m2 = read_jaspar(path)
    assert (m1.matrix_id, m1.name, m2.name) == ("M1", "Foo(var.2)", "M2")
    np.testing.assert_array_equal(m1.counts, [[1, 2], [3, 4], [5, 6], [7, 8]])
    np.testing.assert_array_equal(m2.counts, [[4, 4, 4], [3, 0, 3], [2, 2, 2], [0, 1, 1]])
    assert motifs_for_gene([m1, m2], "FOO") == [m1]
    bad = tmp_path / "bad.txt"
    bad.write_text(">M1 x\nA [1 2]\nC [1 2]\nG [1]\nT [1 2]\n")
    with pytest.raises(ValueError, match="columns; they must be equal"):
        read_jaspar(bad)


# A non-palindromic test motif (consensus GATTACAG), and a background without a match
TEST_COUNTS = np.array(
    [
        [1, 9, 0, 0, 8, 1, 9, 1],  # A
        [1, 0, 1, 1, 1, 8, 0, 1],  # C
        [8, 1, 0, 0, 0, 1, 1, 8],  # G
        [0, 0, 9, 9, 1, 0, 0, 0],  # T
    ],
    dtype=float,
)
CONSENSUS = "GATTACAG"
REVCOMP = "CTGTAATC"


def _brute_force_best(seq: str, motif: Motif, pseudocount: float = 0.8) -> float:
    pwm = motif.pwm(pseudocount)
    lo, hi = pwm.min(axis=0).sum(), pwm.max(axis=0).sum()
    comp = str.maketrans("ACGT", "TGCA")
    best = -np.inf
    for i in range(len(seq) - motif.width + 1):
        window = seq[i : i + motif.width].upper()
        if set(window) - set("ACGT"):
            continue
        for w in (window, window.translate(comp)[::-1]):
            best = max(best, sum(pwm["ACGT".index(b), j] for j, b in enumerate(w)))
    return (best - lo) / (hi - lo) if np.isfinite(best) else np.nan


def test_scan_motifs_planted_and_brute_force():
    rng = np.random.default_rng(1)
    motif = Motif("T1", "TEST", TEST_COUNTS)
    arnt = read_jaspar()[0]
    # background from C/G only scores low for the A/T-rich test motif
    background = "".join(rng.choice(list("CG"), 60))
    forward = background[:20] + CONSENSUS + background[28:]
    reverse = background[:41] + REVCOMP.lower() + background[49:]
    masked = background[:20] + "GATNACAG" + background[28:]
    random_seqs = ["".join(rng.choice(list("ACGTN"), n, p=[0.24] * 4 + [0.04])) for n in (5, 7, 40, 120)]
    seqs = [background, forward, reverse, masked, *random_seqs, ""]
    hits = scan_motifs(seqs, [motif, arnt], threshold=0.8)
    assert sp.issparse(hits) and hits.dtype == bool and hits.shape == (len(seqs), 2)
    assert hits[:4, 0].toarray().ravel().tolist() == [False, True, True, False]

    scores = motif_scores(seqs, [motif, arnt])
    assert scores[1, 0] == pytest.approx(1.0) and scores[2, 0] == pytest.approx(1.0)
    for i, s in enumerate(seqs):
        for j, m in enumerate((motif, arnt)):
            expect = _brute_force_best(s, m)
            if np.isnan(expect):
                assert np.isnan(scores[i, j])
            else:
                assert scores[i, j] == pytest.approx(expect, abs=1e-5)
    # small blocks and motif groups give the same answer
    np.testing.assert_allclose(motif_scores(seqs, [motif, arnt], block_bases=50, motifs_per_group=1), scores, atol=1e-5)
    np.testing.assert_array_equal(hits.toarray(), np.nan_to_num(scores, nan=-1) >= 0.8 - 1e-6)


def test_motif_matrix_from_fasta(tmp_path):
    fasta = tmp_path / "g.fa"
    rng = np.random.default_rng(2)
    chrom = "".join(rng.choice(list("CG"), 100))
    chrom = chrom[:30] + CONSENSUS + chrom[38:70] + REVCOMP + chrom[78:]
    fasta.write_text(">chr1\n" + "".join(chrom[i : i + 30] + "\n" for i in range(0, 100, 30)))
    motifs = [Motif("T1", "TEST", TEST_COUNTS), Motif("T2", "OTHER::TEST", TEST_COUNTS[:, ::-1].copy())]
    names = ["chr1:0-29", "chr1-25-45", "chr1_60_80", "chr1:80-100"]
    result = motif_matrix(names, fasta=fasta, motifs=motifs)
    assert list(result.peaks) == names and result.motif_ids == ["T1", "T2"]
    assert result.matrix[:, 0].toarray().ravel().tolist() == [False, True, True, False]
    frame = result.to_dataframe()
    assert frame.shape == (4, 2) and bool(frame.loc["chr1-25-45", "T1"])
    assert all(isinstance(d, pd.SparseDtype) and d.subtype == np.dtype(bool) for d in frame.dtypes)
    np.testing.assert_array_equal(frame.sparse.to_dense().to_numpy(), result.matrix.toarray())
    only = motif_matrix(names, fasta=fasta, motifs=motifs, names=["other"])
    assert only.motif_names == ["OTHER::TEST"] and only.matrix.shape == (4, 1)
    none = motif_matrix(names, fasta=fasta, motifs=motifs, names=["NOTHING"])
    assert none.matrix.shape == (4, 0)
