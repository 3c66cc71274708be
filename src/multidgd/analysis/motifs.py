"""Transcription factor motifs: JASPAR matrices, scans of sequences, and the motifs of peaks.

The bundled JASPAR 2024 CORE vertebrate matrices (``read_jaspar("JASPAR2024")``) hold 879
motifs; see ``multidgd/bundled/README.md`` for where they come from and their licence.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .fasta import read_fasta_regions
from .genome import BUNDLED, parse_peak_coordinates

__all__ = [
    "Motif",
    "read_jaspar",
    "tf_names",
    "motifs_for_gene",
    "motif_scores",
    "scan_motifs",
    "MotifMatches",
    "motif_matrix",
]

JASPAR2024 = BUNDLED / "JASPAR2024_CORE_vertebrates_latest.jaspar"


# --------------------------------------------------------------------------- JASPAR matrices


@dataclass(frozen=True, eq=False)
class Motif:
    """A position frequency matrix.

    Attributes
    ----------
    matrix_id
        E.g. ``MA0004.1``.
    name
        TF name as in the database, e.g. ``Arnt`` or ``FOS::JUN`` for a dimer.
    counts
        float64 array of shape (4, width), rows A, C, G, T.
    """

    matrix_id: str
    name: str
    counts: np.ndarray

    @property
    def width(self) -> int:
        """Number of positions."""
        return int(self.counts.shape[1])

    def pwm(self, pseudocount: float = 0.8) -> np.ndarray:
        """log2-odds weights (4, width) against a uniform background.

        ``pseudocount`` is split evenly over the four bases (as in Biopython and TFBSTools):
        ``log2(((counts + pseudocount / 4) / (column total + pseudocount)) / 0.25)``.
        """
        counts = np.asarray(self.counts, dtype=np.float64)
        freq = (counts + pseudocount / 4) / (counts.sum(axis=0, keepdims=True) + pseudocount)
        with np.errstate(divide="ignore"):
            return np.log2(freq / 0.25)

    def __repr__(self) -> str:
        """Id, name and width."""
        return f"Motif({self.matrix_id!r}, {self.name!r}, width={self.width})"


def read_jaspar(path: str | Path = "JASPAR2024") -> list[Motif]:
    """Read position frequency matrices in JASPAR text format.

    Parameters
    ----------
    path
        ``"JASPAR2024"``: the bundled JASPAR 2024 CORE vertebrates file (879 matrices, latest
        version of each). Otherwise a file (optionally ``.gz``) with records like::

            >MA0004.1 Arnt
            A [  4.00  19.00   0.00 ...]
            C [ 16.00   0.00  20.00 ...]
            G [ ... ]
            T [ ... ]

        Rows without the base letter and brackets (the plain ``pfm`` format: four rows of
        numbers in the order A, C, G, T) are accepted too. A file of a single matrix without a
        ``>`` header takes its id and name from the file name.

    Returns
    -------
    list[Motif]
        In file order.
    """
    if isinstance(path, str) and path.upper() == "JASPAR2024":
        path = JASPAR2024
    path = Path(path)
    if not path.exists():
        raise ValueError(f"motif file {str(path)!r} does not exist; pass a JASPAR file path or 'JASPAR2024'")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as fh:
        lines = fh.read().splitlines()

    motifs: list[Motif] = []
    header: tuple[str, str] | None = None
    rows: list[tuple[str | None, list[float]]] = []
    header_line = 0

    def finish() -> None:
        if header is None and not rows:
            return
        mid, name = header if header is not None else (path.name.split(".")[0], path.name.split(".")[0])
        where = f"{path}, motif {mid!r} (line {header_line})"
        if len(rows) != 4:
            raise ValueError(f"{where}: {len(rows)} matrix rows; a motif needs 4 (A, C, G, T)")
        letters = [r[0] for r in rows]
        if any(letters):
            if sorted(letters) != ["A", "C", "G", "T"]:
                raise ValueError(f"{where}: rows are labelled {letters}; expected A, C, G and T")
            by_letter = dict(rows)
            values = [by_letter[b] for b in "ACGT"]
        else:
            values = [r[1] for r in rows]
        widths = {len(v) for v in values}
        if len(widths) != 1 or 0 in widths:
            raise ValueError(f"{where}: rows have {[len(v) for v in values]} columns; they must be equal and > 0")
        counts = np.asarray(values, dtype=np.float64)
        if not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError(f"{where}: counts must be finite and >= 0")
        motifs.append(Motif(mid, name, counts))

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(">"):
            finish()
            fields = line[1:].split(None, 1)
            if not fields:
                raise ValueError(f"{path}, line {number}: empty '>' header")
            header = (fields[0], fields[1].strip() if len(fields) > 1 else fields[0])
            rows, header_line = [], number
            continue
        letter, body = None, line
        if line[0] in "ACGTacgt" and line[1:2] in ("", " ", "\t", "[", ":"):
            letter, body = line[0].upper(), line[1:]
        body = body.replace("[", " ").replace("]", " ").replace(":", " ")
        try:
            numbers = [float(x) for x in body.split()]
        except ValueError:
            raise ValueError(
                f"{path}, line {number}: cannot read {raw[:60]!r}; expected '>ID name' headers and rows "
                "like 'A [ 4 19 0 ]' or '4 19 0'"
            ) from None
        rows.append((letter, numbers))
        if header is None and len(rows) == 1:
            header_line = number
    finish()
    if not motifs:
        raise ValueError(f"{path} holds no motifs")
    return motifs


def tf_names(motif_name: str) -> list[str]:
    """TF gene names of a motif, upper case.

    Parameters
    ----------
    motif_name
        A motif's name as in JASPAR: ``Arnt``, a dimer ``FOS::JUN`` or a variant ``Ahr(var.2)``.

    Returns
    -------
    list[str]
        One name per part of a dimer, without a ``(var.N)`` suffix.
    """
    return [re.sub(r"\(var\.\d+\)$", "", part.strip()).upper() for part in motif_name.split("::")]


def motifs_for_gene(motifs: Sequence[Motif], gene: str) -> list[Motif]:
    """Motifs of a TF gene.

    A motif matches when its name equals ``gene`` ignoring case; a dimer ``FOS::JUN`` matches
    both FOS and JUN, and a ``(var.2)`` suffix is ignored.

    Returns
    -------
    list[Motif]
        In the order of ``motifs``; empty when none match.
    """
    target = str(gene).strip().upper()
    return [m for m in motifs if target in tf_names(m.name)]


# --------------------------------------------------------------------------- motif scan

_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _i
    _CODE[ord(chr(_b).lower())] = _i


def _encode(sequences: Sequence[str], length: int) -> np.ndarray:
    """(n, length) uint8 codes, 0-3 for ACGT and 4 for anything else or padding."""
    codes = np.full((len(sequences), length), 4, dtype=np.uint8)
    for i, s in enumerate(sequences):
        if s:
            codes[i, : len(s)] = _CODE[np.frombuffer(s.encode("ascii", "replace"), dtype=np.uint8)]
    return codes


def motif_scores(
    sequences: Sequence[str],
    motifs: Sequence[Motif],
    *,
    pseudocount: float = 0.8,
    block_bases: int = 1 << 16,
    motifs_per_group: int = 16,
) -> np.ndarray:
    """Best relative motif score of each sequence, over all positions and both strands.

    The score of a window is the sum of the motif's log2-odds weights (:meth:`Motif.pwm`,
    uniform background); the relative score is ``(score - min) / (max - min)`` with the lowest
    and highest possible scores of the motif, as ``relative_score`` in TFBSTools and
    Biopython. Windows holding any letter other than A, C, G, T never count. Computed with
    ``torch.nn.functional.conv1d`` over one-hot sequences, in blocks of about ``block_bases``
    bases and groups of motifs of similar width.

    Returns
    -------
    numpy.ndarray
        float32 (n_sequences, n_motifs); NaN where a sequence has no valid window (shorter than
        the motif, or Ns everywhere).
    """
    import torch

    sequences = [str(s) for s in sequences]
    n, m = len(sequences), len(motifs)
    best = np.full((n, m), np.nan, dtype=np.float32)
    if n == 0 or m == 0:
        return best
    if pseudocount <= 0:
        raise ValueError(f"pseudocount={pseudocount}; it must be > 0 so that every weight is finite")
    pwms = [mo.pwm(pseudocount) for mo in motifs]
    lo = np.array([p.min(axis=0).sum() for p in pwms])
    hi = np.array([p.max(axis=0).sum() for p in pwms])
    span = np.where(hi > lo, hi - lo, 1.0)
    widths = np.array([p.shape[1] for p in pwms])
    by_width = np.argsort(widths, kind="stable")
    groups = [by_width[i : i + motifs_per_group] for i in range(0, m, motifs_per_group)]
    kernels = []
    for group in groups:
        wmax = int(widths[group].max())
        weight = np.zeros((2 * len(group), 4, wmax), dtype=np.float32)
        for k, j in enumerate(group):
            w = widths[j]
            weight[k, :, :w] = pwms[j]
            weight[len(group) + k, :, :w] = pwms[j][::-1, ::-1]  # reverse complement (A<->T, C<->G)
        kernels.append((group, wmax, torch.from_numpy(weight)))

    lengths = np.array([len(s) for s in sequences])
    order = np.argsort(lengths, kind="stable")
    start = 0
    with torch.no_grad():
        while start < n:
            stop = start + 1
            while stop < n and int(lengths[order[stop]]) * (stop - start + 1) <= block_bases:
                stop += 1
            rows = order[start:stop]
            length = max(int(lengths[rows].max()), 1)
            codes = _encode([sequences[i] for i in rows], length)
            bad = np.concatenate([np.zeros((len(rows), 1), np.int32), np.cumsum(codes == 4, axis=1, dtype=np.int32)], 1)
            onehot = torch.nn.functional.one_hot(torch.from_numpy(codes.astype(np.int64)), 5)[..., :4]
            onehot = onehot.permute(0, 2, 1).to(torch.float32).contiguous()
            for group, wmax, weight in kernels:
                g = len(group)
                if length < widths[group].min():
                    continue
                x = torch.nn.functional.pad(onehot, (0, wmax - 1))
                score = torch.nn.functional.conv1d(x, weight)[:, :, :length]  # (b, 2g, length)
                score = torch.maximum(score[:, :g], score[:, g:]).numpy()
                for k, j in enumerate(group):
                    w = int(widths[j])
                    if w > length:
                        continue
                    positions = length - w + 1
                    valid = (bad[:, w : w + positions] - bad[:, :positions]) == 0
                    s = np.where(valid, score[:, k, :positions], -np.inf).max(axis=1)
                    rel = ((s - lo[j]) / span[j]).astype(np.float32)
                    best[rows, j] = np.where(np.isfinite(s), rel, np.nan)
            start = stop
    return best


def scan_motifs(
    sequences: Sequence[str] | tuple[str | Path, pd.DataFrame],
    motifs: Sequence[Motif],
    *,
    threshold: float = 0.8,
    pseudocount: float = 0.8,
) -> sp.csr_matrix:
    """Which sequences hold a motif match, on either strand.

    Parameters
    ----------
    sequences
        DNA strings, or a pair ``(fasta_path, peaks)`` read with :func:`read_fasta_regions`.
    motifs
        From :func:`read_jaspar`.
    threshold
        A match is a window whose relative score (:func:`motif_scores`) is at least this
        (0.8 by default, as commonly used with TFBSTools/Biopython).
    pseudocount
        Total pseudocount per column, split over the four bases.

    Returns
    -------
    scipy.sparse.csr_matrix
        bool, (n_sequences, n_motifs).
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold={threshold}; a relative score threshold must be in [0, 1]")
    if isinstance(sequences, tuple) and len(sequences) == 2 and isinstance(sequences[1], pd.DataFrame):
        sequences = read_fasta_regions(sequences[0], sequences[1])
    scores = motif_scores(sequences, motifs, pseudocount=pseudocount)
    with np.errstate(invalid="ignore"):
        hits = scores >= threshold - 1e-6
    return sp.csr_matrix(hits, dtype=bool)


class MotifMatches(NamedTuple):
    """Result of :func:`motif_matrix`.

    Attributes
    ----------
    matrix
        ``scipy.sparse.csr_matrix`` of bool, (n_peaks, n_motifs).
    peaks
        Peak names (``pandas.Index``), the rows.
    motif_ids
        JASPAR matrix ids, the columns.
    motif_names
        TF names of the columns.
    """

    matrix: sp.csr_matrix
    peaks: pd.Index
    motif_ids: list[str]
    motif_names: list[str]

    def to_dataframe(self) -> pd.DataFrame:
        """Peaks x motif ids as a DataFrame with sparse bool columns."""
        csc = sp.csc_matrix(self.matrix, dtype=bool)
        columns = {}
        for j in range(csc.shape[1]):
            column = np.zeros(csc.shape[0], dtype=bool)
            column[csc.indices[csc.indptr[j] : csc.indptr[j + 1]]] = True
            columns[j] = pd.arrays.SparseArray(column, fill_value=False)
        frame = pd.DataFrame(columns, index=self.peaks)
        frame.columns = pd.Index(self.motif_ids)
        return frame


def motif_matrix(
    peaks: pd.DataFrame | pd.Index | Sequence[str],
    *,
    fasta: str | Path,
    motifs: str | Path | Sequence[Motif] = "JASPAR2024",
    names: Sequence[str] | None = None,
    threshold: float = 0.8,
    pseudocount: float = 0.8,
) -> MotifMatches:
    """Motif matches in peaks: coordinates, sequences from a FASTA, and a scan.

    Parameters
    ----------
    peaks
        Anything :func:`parse_peak_coordinates` accepts (an ATAC ``var``, peak names); peaks that
        cannot be parsed raise (parse with ``errors="coerce"`` first to give them no matches).
    fasta
        Plain FASTA of the genome the peaks were called on.
    motifs
        ``"JASPAR2024"`` (bundled), a JASPAR file path, or a list of :class:`Motif`.
    names
        Optional TF gene names: keep only the motifs of these genes (:func:`motifs_for_gene`).
        When none match, the result has no columns.
    threshold, pseudocount
        As in :func:`scan_motifs`.

    Returns
    -------
    MotifMatches
        ``(matrix, peaks, motif_ids, motif_names)``; ``matrix`` is a bool CSR (n_peaks, n_motifs).
    """
    coords = parse_peak_coordinates(peaks)
    if isinstance(motifs, (str, Path)):
        motifs = read_jaspar(motifs)
    motifs = list(motifs)
    if names is not None:
        wanted = {str(g).strip().upper() for g in ([names] if isinstance(names, str) else names)}
        motifs = [m for m in motifs if wanted & set(tf_names(m.name))]
    sequences = read_fasta_regions(fasta, coords)
    matrix = scan_motifs(sequences, motifs, threshold=threshold, pseudocount=pseudocount)
    return MotifMatches(matrix, coords.index, [m.matrix_id for m in motifs], [m.name for m in motifs])
