"""Region sequences from a plain FASTA file, by random access (a samtools ``.fai`` index or one pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["read_fasta_regions"]


def _check_plain_fasta(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"FASTA {str(path)!r} does not exist")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if path.suffix in (".gz", ".bgz", ".bgzf") or magic == b"\x1f\x8b":
        raise ValueError(
            f"FASTA {path} is compressed; gzip and bgzip (+faidx) FASTA are not supported. Give a plain "
            "FASTA: decompress it (gunzip -k) and optionally index it with samtools faidx"
        )


def _fasta_index(path: Path) -> dict[str, tuple[int, int, int, int]]:
    """Map sequence names to (length, offset, linebases, linewidth), from ``path.fai`` or one pass over the file."""
    fai = Path(str(path) + ".fai")
    if fai.exists():
        index = {}
        with open(fai) as fh:
            for number, line in enumerate(fh, start=1):
                fields = line.rstrip("\n").split("\t")
                if len(fields) < 5:
                    raise ValueError(f"{fai}, line {number}: expected 5 tab-separated fields (samtools faidx)")
                index[fields[0]] = tuple(int(x) for x in fields[1:5])
        return index

    index: dict[str, tuple[int, int, int, int]] = {}
    name = None
    length = offset = linebases = linewidth = 0
    short_seen = False
    position = 0
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, start=1):
            size = len(line)
            if line.startswith(b">"):
                if name is not None:
                    index[name] = (length, offset, linebases, linewidth)
                name = line[1:].split(None, 1)[0].decode() if line[1:].strip() else ""
                if not name or name in index:
                    raise ValueError(f"FASTA {path}, line {number}: empty or repeated sequence name {name!r}")
                length, offset, linebases, linewidth, short_seen = 0, position + size, 0, 0, False
            elif name is None:
                if line.strip():
                    raise ValueError(f"FASTA {path}: sequence before the first '>' header (line {number})")
                offset = position + size
            else:
                bases = len(line.rstrip(b"\r\n"))
                if bases:
                    if linebases == 0:
                        linebases, linewidth = bases, size
                    elif short_seen or bases > linebases or (bases == linebases and size != linewidth):
                        raise ValueError(
                            f"FASTA {path}, sequence {name!r}, line {number}: lines differ in length; random "
                            "access needs equal line lengths (as samtools faidx does)"
                        )
                    if bases < linebases:
                        short_seen = True
                    length += bases
                else:
                    short_seen = True
            position += size
    if name is not None:
        index[name] = (length, offset, linebases, linewidth)
    if not index:
        raise ValueError(f"FASTA {path} has no '>' records")
    return index


def _chrom_aliases(chrom: str) -> list[str]:
    out = [chrom]
    if chrom.startswith("chr"):
        out.append(chrom[3:])
    else:
        out.append("chr" + chrom)
    if chrom in ("chrM", "M"):
        out.append("MT")
    if chrom == "MT":
        out.append("chrM")
    return out


def read_fasta_regions(fasta_path: str | Path, peaks: pd.DataFrame) -> list[str]:
    """Sequences of regions from a plain FASTA file.

    Parameters
    ----------
    fasta_path
        Uncompressed FASTA. A samtools ``.fai`` index next to it (``genome.fa.fai``) is used when
        present; otherwise the index is built in memory in one pass (nothing is written).
    peaks
        Columns ``chrom``, ``start``, ``end``, 0-based half-open (BED-like). A chromosome missing
        from the FASTA is also looked up with/without a ``chr`` prefix (and chrM as MT). Rows
        with ``chrom == ""`` (from ``parse_peak_coordinates(errors="coerce")``) give ``""``.

    Returns
    -------
    list[str]
        Upper-case sequences in the order of ``peaks``; letters other than ACGT (N, IUPAC codes)
        are kept.
    """
    path = Path(fasta_path)
    _check_plain_fasta(path)
    missing_cols = [c for c in ("chrom", "start", "end") if c not in peaks.columns]
    if missing_cols:
        raise ValueError(f"peaks lacks columns {missing_cols}; it needs chrom, start, end")
    index = _fasta_index(path)
    chroms = peaks["chrom"].astype(str).to_numpy()
    starts = peaks["start"].to_numpy(dtype=np.int64)
    ends = peaks["end"].to_numpy(dtype=np.int64)

    resolved: dict[str, str | None] = {}
    for ch in pd.unique(chroms):
        if ch == "":
            continue
        resolved[ch] = next((a for a in _chrom_aliases(ch) if a in index), None)
    absent = [c for c, r in resolved.items() if r is None]
    if absent:
        raise ValueError(
            f"{len(absent)} peak chromosomes are not in FASTA {path}, e.g. {absent[:3]}; its sequences "
            f"include {list(index)[:5]}. Is it the same genome assembly?"
        )
    valid = chroms != ""
    lengths = np.array([index[resolved[c]][0] if c else 0 for c in chroms], dtype=np.int64)
    beyond = valid & ((ends > lengths) | (starts < 0) | (starts > ends))
    if beyond.any():
        i = np.flatnonzero(beyond)[:3]
        examples = [f"{chroms[j]}:{starts[j]}-{ends[j]} (length {lengths[j]})" for j in i]
        raise ValueError(
            f"{int(beyond.sum())} regions fall outside their chromosome in FASTA {path}, e.g. {examples}; "
            "is it the same genome assembly?"
        )

    out: list[str] = []
    with open(path, "rb") as fh:
        for ch, s, e in zip(chroms, starts, ends, strict=True):
            if ch == "" or e <= s:
                out.append("")
                continue
            _, offset, linebases, linewidth = index[resolved[ch]]
            first = offset + (s // linebases) * linewidth + s % linebases
            stop = offset + ((e - 1) // linebases) * linewidth + (e - 1) % linebases + 1
            fh.seek(first)
            raw = fh.read(stop - first)
            out.append(raw.replace(b"\n", b"").replace(b"\r", b"").decode("ascii").upper())
    return out
