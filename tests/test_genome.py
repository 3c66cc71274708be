import gzip

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multidgd import genome
from multidgd.genome import (
    Motif,
    gene_tss,
    load_tss,
    motif_matrix,
    motif_scores,
    motifs_for_gene,
    parse_peak_coordinates,
    read_fasta_regions,
    read_jaspar,
    scan_motifs,
    tss_distance,
)

from .conftest import SHARED_DATA

# ----------------------------------------------------------------------------- peak coordinates


def test_peak_name_formats():
    names = [
        "chr1:100-200",
        "chr2-300-450",
        "chrX_5_10",
        "chrUn_KI270742v1:1-100",
        "GL000194.1-100-200",
        "chr1_KI270706v1_random_7_9",
    ]
    out = parse_peak_coordinates(names)
    assert list(out.index) == names
    assert out["chrom"].tolist() == ["chr1", "chr2", "chrX", "chrUn_KI270742v1", "GL000194.1", "chr1_KI270706v1_random"]
    assert out["start"].tolist() == [100, 300, 5, 1, 100, 7]
    assert out["end"].tolist() == [200, 450, 10, 100, 200, 9]
    assert out["start"].dtype == np.int64 and out["end"].dtype == np.int64
    # an Index gives the same, and a var whose index holds the names too
    pd.testing.assert_frame_equal(parse_peak_coordinates(pd.Index(names)), out)
    pd.testing.assert_frame_equal(parse_peak_coordinates(pd.DataFrame(index=names)), out)


def test_peak_columns_and_interval():
    var = pd.DataFrame(
        {"chrom": ["chr1", "chr3"], "start": [10, 20], "end": [15, 40], "interval": ["chr9:1-2", "chr9:3-4"]},
        index=["p1", "p2"],
    )
    out = parse_peak_coordinates(var)  # columns win over the interval column and the names
    assert list(out.index) == ["p1", "p2"]
    assert out["chrom"].tolist() == ["chr1", "chr3"]
    assert out["start"].tolist() == [10, 20] and out["end"].tolist() == [15, 40]

    ucsc = pd.DataFrame({"chr": ["chr2"], "chromStart": [5.0], "chromEnd": [8.0]}, index=["a"])
    assert parse_peak_coordinates(ucsc).loc["a"].tolist() == ["chr2", 5, 8]
    bioc = pd.DataFrame({"seqnames": ["chr4"], "start": ["7"], "end": ["9"]}, index=["b"])
    assert parse_peak_coordinates(bioc).loc["b"].tolist() == ["chr4", 7, 9]

    tenx = pd.DataFrame({"interval": ["chr1:100350982-100353664", "chr5:1-2"]}, index=["x", "y"])
    out = parse_peak_coordinates(tenx)
    assert out.loc["x"].tolist() == ["chr1", 100350982, 100353664]
    assert out.loc["y"].tolist() == ["chr5", 1, 2]


def test_peak_errors_and_coerce():
    names = ["chr1:100-200", "gene_A", "chr2:5", "chr3-7-9"]
    with pytest.raises(ValueError, match=r"2 of 4 peaks could not be parsed.*'gene_A', 'chr2:5'.*chr1:100-200"):
        parse_peak_coordinates(names)
    out = parse_peak_coordinates(names, errors="coerce")
    assert out["chrom"].tolist() == ["chr1", "", "", "chr3"]
    assert out["start"].tolist() == [100, -1, -1, 7]
    assert out["end"].tolist() == [200, -1, -1, 9]
    with pytest.raises(ValueError, match=r"start > end.*chr1:9-3"):
        parse_peak_coordinates(["chr1:9-3"])
    assert parse_peak_coordinates(["chr1:9-3"], errors="coerce")["start"].tolist() == [-1]
    with pytest.raises(ValueError, match="errors="):
        parse_peak_coordinates(names, errors="skip")


# ----------------------------------------------------------------------------- TSS


def test_bundled_tss_table():
    tss = load_tss("GRCh38")
    assert list(tss.columns) == ["chrom", "tss", "strand", "gene_id", "gene_name", "gene_type"]
    assert tss["tss"].dtype == np.int64
    assert set(tss["chrom"]) == {f"chr{i}" for i in range(1, 23)} | {"chrX", "chrY", "chrM"}
    assert not tss.duplicated(["gene_id", "tss"]).any()
    tspan6 = tss[tss["gene_name"] == "TSPAN6"]
    # from ensdb_v93_hg38_transcripts.tsv.gz: transcripts of ENSG00000000003 start at these positions
    assert sorted(tspan6["tss"]) == [100636689, 100636806, 100637104, 100639991]
    assert set(tspan6["chrom"]) == {"chrX"} and set(tspan6["strand"]) == {"-"}
    assert set(tspan6["gene_id"]) == {"ENSG00000000003"}
    assert load_tss("hg38").shape == tss.shape


def test_bundled_tss_matches_source():
    source = SHARED_DATA / "annotation" / "ensdb_v93_hg38_transcripts.tsv.gz"
    if not source.exists():
        pytest.skip("shared annotation file not available")
    src = pd.read_csv(source, sep="\t", usecols=["seqnames", "strand", "gene_name", "tss"])
    tss = load_tss()
    for gene in ("GAPDH", "TSPAN6", "CD19"):
        expect = src[src["gene_name"] == gene]
        got = tss[tss["gene_name"] == gene]
        assert set(got["tss"]) == set(expect["tss"].astype(np.int64))
        assert set(got["strand"]) == set(expect["strand"])
        assert set(got["chrom"]) == set(expect["seqnames"])


GTF = (
    "#!genome-build test\n"
    'chr1\tt\tgene\t1000\t2000\t.\t+\t.\tgene_id "G1"; gene_name "AAA"; gene_type "protein_coding";\n'
    'chr1\tt\ttranscript\t1000\t2000\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "AAA"; '
    'gene_type "protein_coding";\n'
    'chr1\tt\texon\t1000\t1200\t.\t+\t.\tgene_id "G1"; transcript_id "T1"; gene_name "AAA";\n'
    'chr1\tt\ttranscript\t1100\t2000\t.\t+\t.\tgene_id "G1"; transcript_id "T2"; gene_name "AAA"; '
    'gene_type "protein_coding";\n'
    'chr1\tt\ttranscript\t1000\t1800\t.\t+\t.\tgene_id "G1"; transcript_id "T3"; gene_name "AAA"; '
    'gene_type "protein_coding";\n'
    'chr2\tt\tgene\t5000\t6000\t.\t-\t.\tgene_id "G2"; gene_name "BBB"; gene_biotype "lincRNA";\n'
    'chr2\tt\ttranscript\t5000\t6000\t.\t-\t.\tgene_id "G2"; transcript_id "T4"; gene_name "BBB"; '
    'gene_biotype "lincRNA";\n'
)


def test_gtf(tmp_path):
    path = tmp_path / "genes.gtf.gz"
    path.write_bytes(gzip.compress(GTF.encode()))
    tss = load_tss(path)
    assert tss[["chrom", "tss", "strand", "gene_id", "gene_name"]].values.tolist() == [
        ["chr1", 1000, "+", "G1", "AAA"],
        ["chr1", 1100, "+", "G1", "AAA"],
        ["chr2", 6000, "-", "G2", "BBB"],
    ]
    assert tss["gene_type"].tolist() == ["protein_coding", "protein_coding", "lincRNA"]
    # only gene rows: the gene's own start/end
    genes_only = tmp_path / "genes_only.gtf"
    genes_only.write_text("".join(line + "\n" for line in GTF.splitlines() if "\tgene\t" in line))
    assert load_tss(genes_only)[["tss", "strand"]].values.tolist() == [[1000, "+"], [6000, "-"]]


def test_tss_from_tables(tmp_path):
    table = pd.DataFrame(
        {
            "seqnames": ["chr1", "chr1"],
            "start": [10, 50],
            "end": [20, 90],
            "strand": ["+", "-"],
            "gene_name": list("ab"),
        }
    )
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    out = load_tss(path)
    assert out[["chrom", "tss", "strand", "gene_id", "gene_name"]].values.tolist() == [
        ["chr1", 10, "+", "", "a"],
        ["chr1", 90, "-", "", "b"],
    ]
    direct = load_tss(pd.DataFrame({"chrom": ["chr2"], "tss": [7], "gene_id": ["E1"]}))
    assert direct.values.tolist() == [["chr2", 7, ".", "E1", ""]]
    with pytest.raises(ValueError, match="needs a chromosome column"):
        load_tss(pd.DataFrame({"tss": [1], "gene_name": ["a"]}))
    with pytest.raises(ValueError, match="'tss' column, or 'start', 'end' and 'strand'"):
        load_tss(pd.DataFrame({"chrom": ["chr1"], "start": [1], "gene_name": ["a"]}))
    with pytest.raises(ValueError, match="strand values"):
        load_tss(pd.DataFrame({"chrom": ["chr1"], "tss": [1], "strand": ["x"], "gene_name": ["a"]}))
    with pytest.raises(ValueError, match="neither a known genome nor an existing file"):
        load_tss("mm10")


def test_gene_tss_matching():
    table = load_tss(
        pd.DataFrame(
            {
                "chrom": ["chr1", "chr1", "chr1", "chr5", "chr5"],
                "tss": [100, 100, 300, 50, 70],
                "strand": ["+", "+", "+", "-", "-"],
                "gene_id": ["E1", "E1", "E1", "E2", "E3"],
                "gene_name": ["Aa", "Aa", "Aa", "Bb", "Bb"],
            }
        )
    )
    var = pd.DataFrame({"gene_ids": ["E3"]}, index=["Bb-1"])
    out = gene_tss(["Aa", "E2.4", "aa", "Bb", "Bb-1", "zz"], table, var=var)
    assert list(out) == ["Aa", "E2.4", "aa", "Bb", "Bb-1", "zz"]
    assert out["Aa"]["tss"].tolist() == [100, 300]  # unique positions
    assert out["E2.4"]["tss"].tolist() == [50]  # by id, version ignored
    assert out["aa"]["tss"].tolist() == [100, 300]  # case-insensitive name
    assert out["Bb"]["tss"].tolist() == [50, 70]  # both ids of a repeated name
    assert out["Bb-1"]["tss"].tolist() == [70]  # var['gene_ids'] maps the unique-made name
    assert out["zz"].empty and "tss" in out["zz"].columns
    assert np.isnan(tss_distance(pd.DataFrame({"chrom": ["chr1"], "start": [0], "end": [5]}), out["zz"])).all()
    with pytest.raises(ValueError, match=r"1 of 6 genes have no TSS.*'zz'"):
        gene_tss(["Aa", "E2.4", "aa", "Bb", "Bb-1", "zz"], table, var=var, errors="raise")
    bundled = gene_tss("GAPDH")
    assert set(bundled["GAPDH"]["chrom"]) == {"chr12"} and 6534512 in set(bundled["GAPDH"]["tss"])


def test_tss_distance_by_hand():
    peaks = pd.DataFrame(
        {"chrom": ["chr1", "chr1", "chr1", "chr2"], "start": [100, 300, 0, 100], "end": [200, 400, 50, 200]},
        index=["A", "B", "C", "D"],
    )
    # TSS 151 (1-based) is base 150: inside A; B starts 150 bases further on; C ends at base 49
    plus = pd.DataFrame({"chrom": ["chr1"], "tss": [151], "strand": ["+"]})
    np.testing.assert_array_equal(tss_distance(peaks, plus), [0, 150, -101, np.nan])
    minus = plus.assign(strand="-")
    np.testing.assert_array_equal(tss_distance(peaks, minus), [0, -150, 101, np.nan])
    assert not np.signbit(tss_distance(peaks, minus)[0])  # +0.0, not -0.0
    # peak edges: 1-based 101 and 200 are the first and last bases of A
    for p, expect in ((101, 0), (200, 0), (201, -1), (100, 1)):
        one = pd.DataFrame({"chrom": ["chr1"], "tss": [p], "strand": ["+"]})
        assert tss_distance(peaks.iloc[:1], one)[0] == expect
    # two TSSs: the nearest one counts for each peak
    two = pd.DataFrame({"chrom": ["chr1", "chr1"], "tss": [151, 351], "strand": ["+", "+"]})
    np.testing.assert_array_equal(tss_distance(peaks, two), [0, 0, -101, np.nan])
    with pytest.raises(ValueError, match="lacks columns"):
        tss_distance(peaks, pd.DataFrame({"chrom": ["chr1"], "tss": [1]}))


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


CHR1 = "ACGTACGTTTGGCCAANNACgtacgtAAACCCGGGTT"  # 37 bases, lower case and Ns on purpose
CHR2 = "TTTTTGGGGGCCCCCAAAAAACGTA"  # 25 bases


def _write_fasta(path, width=10):
    text = ""
    for name, seq in (("chr1", CHR1), ("chr2", CHR2)):
        text += f">{name} description\n" + "".join(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    path.write_text(text)
    return text


def test_fasta_regions_with_and_without_fai(tmp_path):
    fasta = tmp_path / "genome.fa"
    text = _write_fasta(fasta)
    peaks = pd.DataFrame(
        {
            "chrom": ["chr1", "chr1", "chr1", "chr2", "chr2", "chr1", ""],
            "start": [0, 8, 9, 0, 20, 30, -1],
            "end": [37, 23, 10, 25, 25, 30, -1],
        }
    )
    known = {"chr1": CHR1, "chr2": CHR2, "": ""}
    expect = [known[c][s:e].upper() for c, s, e in zip(peaks["chrom"], peaks["start"], peaks["end"], strict=True)]
    without = read_fasta_regions(fasta, peaks)
    assert without == expect
    assert not (tmp_path / "genome.fa.fai").exists()  # nothing written next to the FASTA
    assert without[3] == CHR2 and without[4] == "ACGTA"

    offset2 = text.index(">chr2")
    offset2 += len(">chr2 description\n")
    fai = f"chr1\t37\t{len('>chr1 description') + 1}\t10\t11\nchr2\t25\t{offset2}\t10\t11\n"
    (tmp_path / "genome.fa.fai").write_text(fai)
    assert genome._fasta_index(fasta) == {"chr1": (37, 18, 10, 11), "chr2": (25, offset2, 10, 11)}
    assert read_fasta_regions(fasta, peaks) == expect
    (tmp_path / "genome.fa.fai").unlink()
    assert genome._fasta_index(fasta) == {"chr1": (37, 18, 10, 11), "chr2": (25, offset2, 10, 11)}

    # Ensembl-style names are found from UCSC-style peaks
    assert read_fasta_regions(fasta, pd.DataFrame({"chrom": ["1"], "start": [2], "end": [5]})) == ["GTA"]
    with pytest.raises(ValueError, match=r"not in FASTA.*'chr9'"):
        read_fasta_regions(fasta, pd.DataFrame({"chrom": ["chr9"], "start": [0], "end": [5]}))
    with pytest.raises(ValueError, match="outside their chromosome"):
        read_fasta_regions(fasta, pd.DataFrame({"chrom": ["chr2"], "start": [20], "end": [26]}))
    gz = tmp_path / "genome.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(ValueError, match="compressed.*plain"):
        read_fasta_regions(gz, peaks)


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
