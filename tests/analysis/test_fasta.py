"""Region sequences from plain FASTA files, with and without a .fai index."""

import gzip

import pandas as pd
import pytest

from multidgd.analysis import fasta as fasta_module
from multidgd.analysis.fasta import read_fasta_regions

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
    assert fasta_module._fasta_index(fasta) == {"chr1": (37, 18, 10, 11), "chr2": (25, offset2, 10, 11)}
    assert read_fasta_regions(fasta, peaks) == expect
    (tmp_path / "genome.fa.fai").unlink()
    assert fasta_module._fasta_index(fasta) == {"chr1": (37, 18, 10, 11), "chr2": (25, offset2, 10, 11)}

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
