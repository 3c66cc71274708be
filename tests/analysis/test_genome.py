"""Peak coordinates, TSS tables and distances to TSSs."""

import gzip

import numpy as np
import pandas as pd
import pytest

from multidgd.analysis.genome import gene_tss, load_tss, parse_peak_coordinates, tss_distance

from ..conftest import SHARED_DATA

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
