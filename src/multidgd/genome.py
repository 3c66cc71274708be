"""Genome helpers for gene-to-peak analysis: peak coordinates, TSS annotation, TF motifs.

Coordinate conventions
----------------------
* Peaks (``start``/``end``) are BED-like: 0-based, half-open. ``chr1:100-200`` (10x, ArchR,
  Signac names and ``interval`` columns) covers the 100 bases with 0-based indices 100..199.
* TSS positions (``tss``) are 1-based, as in Ensembl and GTF files: a TSS at ``p`` is the base
  with 0-based index ``p - 1``.

The bundled human table (``load_tss("GRCh38")``) holds Ensembl release 93 transcript start sites
and the bundled JASPAR 2024 CORE vertebrate matrices (``read_jaspar("JASPAR2024")``) hold 879
motifs; see ``multidgd/bundled/README.md`` for where they come from and their licences.
"""

from __future__ import annotations

import functools
import gzip
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "parse_peak_coordinates",
    "load_tss",
    "gene_tss",
    "tss_distance",
    "Motif",
    "read_jaspar",
    "motifs_for_gene",
    "read_fasta_regions",
    "motif_scores",
    "scan_motifs",
    "MotifMatches",
    "motif_matrix",
]

BUNDLED = Path(__file__).resolve().parent / "bundled"
TSS_GRCH38 = BUNDLED / "tss_grch38_ensembl93.tsv.gz"
JASPAR2024 = BUNDLED / "JASPAR2024_CORE_vertebrates_latest.jaspar"

PEAK_FORMATS = "'chr1:100-200', 'chr1-100-200' or 'chr1_100_200' (chromosome, 0-based start, end)"
# the chromosome is everything before the last two integer fields; `.+` is greedy, so names
# such as chrUn_KI270742v1:1-100 or GL000194.1-100-200 keep their own '_', '-' and '.'
_PEAK_RE = r"^(?P<chrom>.+)[:_-](?P<start>\d+)[_-](?P<end>\d+)$"
_CHROM_COLUMNS = ("chrom", "chr", "seqnames", "chromosome")
_START_COLUMNS = ("start", "chromStart")
_END_COLUMNS = ("end", "chromEnd")
TSS_COLUMNS = ["chrom", "tss", "strand", "gene_id", "gene_name"]


# --------------------------------------------------------------------------- peak coordinates


def _first_column(columns: Iterable[str], candidates: Sequence[str]) -> str | None:
    present = set(columns)
    return next((c for c in candidates if c in present), None)


def parse_peak_coordinates(var: pd.DataFrame | pd.Index | Sequence[str], *, errors: str = "raise") -> pd.DataFrame:
    """Chromosome, start and end of each peak.

    Parameters
    ----------
    var
        An AnnData ``var`` of peaks, an index of peak names, or a sequence of names. For a
        DataFrame the sources are tried in this order: columns ``chrom``/``start``/``end``
        (also ``chr``/``chromStart``/``chromEnd`` and ``seqnames``), a 10x ``interval``
        column (``chr1:100-200``), then the index. Names may be ``chr1:100-200``,
        ``chr1-100-200`` or ``chr1_100_200``; they are parsed from the right, so the chromosome
        itself may contain ``_``, ``-`` or ``.`` (``chrUn_KI270742v1:1-100``).
    errors
        ``"raise"`` (default): a ValueError names up to 3 peaks that cannot be parsed.
        ``"coerce"``: such peaks get ``chrom=""`` and ``start=end=-1``.

    Returns
    -------
    pandas.DataFrame
        Indexed like the input names, columns ``chrom`` (str), ``start`` and ``end`` (int64),
        0-based half-open (BED-like), with ``start <= end``.
    """
    if errors not in ("raise", "coerce"):
        raise ValueError(f"errors={errors!r}; allowed: 'raise' or 'coerce'")
    source = "names"
    if isinstance(var, pd.DataFrame):
        index = var.index.astype(str)
        chrom_col = _first_column(var.columns, _CHROM_COLUMNS)
        start_col = _first_column(var.columns, _START_COLUMNS)
        end_col = _first_column(var.columns, _END_COLUMNS)
        if chrom_col is not None and start_col is not None and end_col is not None:
            source = f"columns {chrom_col!r}/{start_col!r}/{end_col!r}"
            chrom = var[chrom_col].astype("string").fillna("").str.strip()
            start = pd.to_numeric(var[start_col], errors="coerce")
            end = pd.to_numeric(var[end_col], errors="coerce")
            frame = pd.DataFrame({"chrom": chrom.to_numpy(), "start": start.to_numpy(), "end": end.to_numpy()})
        else:
            texts = var["interval"] if "interval" in var.columns else pd.Series(var.index, index=var.index)
            if "interval" in var.columns:
                source = "column 'interval'"
            frame = _parse_names(texts.astype("string").fillna("").to_numpy())
    elif isinstance(var, (str, bytes)):
        raise ValueError("var is a single string; pass a sequence of peak names, an Index or a DataFrame")
    else:
        index = pd.Index([str(x) for x in var])
        frame = _parse_names(index.to_numpy())

    start = frame["start"].to_numpy(dtype=np.float64)
    end = frame["end"].to_numpy(dtype=np.float64)
    chrom = frame["chrom"].astype("string").fillna("").to_numpy(dtype=object)
    bad = (chrom == "") | ~np.isfinite(start) | ~np.isfinite(end)
    bad |= (start != np.floor(start)) | (end != np.floor(end))
    with np.errstate(invalid="ignore"):
        bad |= start < 0
        reversed_ = ~bad & (start > end)
    if bad.any() or reversed_.any():
        if errors == "raise" and reversed_.any():
            examples = [f"{index[i]} ({int(start[i])} > {int(end[i])})" for i in np.flatnonzero(reversed_)[:3]]
            raise ValueError(
                f"{int(reversed_.sum())} of {len(index)} peaks from {source} have start > end, e.g. {examples}; "
                "start and end must satisfy start <= end (0-based, half-open)"
            )
        bad |= reversed_
        if errors == "raise":
            where = np.flatnonzero(bad)
            examples = [str(index[i]) for i in where[:3]]
            raise ValueError(
                f"{len(where)} of {len(index)} peaks could not be parsed from {source}, e.g. {examples}; accepted: "
                f"chrom/start/end (or chr/chromStart/chromEnd, seqnames) columns, a 10x 'interval' "
                f"column, or names like {PEAK_FORMATS}. Pass errors='coerce' to mark them with "
                "chrom '' and start/end -1."
            )
        chrom = chrom.copy()
        chrom[bad] = ""
        start = np.where(bad, -1, start)
        end = np.where(bad, -1, end)
    out = pd.DataFrame(
        {"chrom": chrom.astype(str).astype(object), "start": start.astype(np.int64), "end": end.astype(np.int64)},
        index=index,
    )
    return out


def _parse_names(names: np.ndarray) -> pd.DataFrame:
    parts = pd.Series(names, dtype="string").str.strip().str.extract(_PEAK_RE)
    return pd.DataFrame(
        {
            "chrom": parts["chrom"].fillna("").to_numpy(dtype=object),
            "start": pd.to_numeric(parts["start"], errors="coerce").to_numpy(dtype=np.float64),
            "end": pd.to_numeric(parts["end"], errors="coerce").to_numpy(dtype=np.float64),
        }
    )


# --------------------------------------------------------------------------- TSS annotation


@functools.lru_cache(maxsize=1)
def _bundled_tss() -> pd.DataFrame:
    table = pd.read_csv(
        TSS_GRCH38,
        sep="\t",
        dtype={"chrom": str, "tss": np.int64, "strand": str, "gene_id": str, "gene_name": str, "gene_type": str},
        keep_default_na=False,
    )
    return table


def load_tss(source: str | Path | pd.DataFrame = "GRCh38") -> pd.DataFrame:
    """A table of transcription start sites.

    Parameters
    ----------
    source
        ``"GRCh38"`` (or ``"hg38"``): the bundled human table, Ensembl release 93, one row per
        unique (gene, TSS) on chr1-22, chrX, chrY and chrM (UCSC-style names).
        A path to a TSV/CSV (``.tsv``, ``.txt``, ``.csv``, optionally ``.gz``) with columns
        ``gene_name`` and/or ``gene_id``, ``chrom`` (or ``seqnames``/``chr``/``chromosome``) and
        either ``tss`` (``strand`` optional) or ``start``/``end``/``strand`` (then the TSS is
        ``start`` on ``+`` and ``end`` on ``-``, i.e. 1-based inclusive as in GTF).
        A path to a GTF (``.gtf`` or ``.gtf.gz``): ``transcript`` rows (``gene`` rows if there are
        none), ``gene_id``/``gene_name``/``gene_type`` (or ``gene_biotype``) from the attributes.
        A DataFrame is validated like a TSV.

    Returns
    -------
    pandas.DataFrame
        Columns ``chrom`` (str), ``tss`` (int64, 1-based), ``strand`` (``+``, ``-`` or ``.``),
        ``gene_id``, ``gene_name`` (str; ``""`` where the source has none) and ``gene_type`` when
        the source has it, with a fresh RangeIndex.
    """
    if isinstance(source, pd.DataFrame):
        return _standardise_tss(source, "the DataFrame")
    if isinstance(source, str) and source.lower() in ("grch38", "hg38"):
        return _bundled_tss().copy()
    path = Path(source)
    if not path.exists():
        raise ValueError(
            f"TSS source {str(source)!r} is neither a known genome nor an existing file; allowed: "
            "'GRCh38'/'hg38' (bundled Ensembl 93 table), a TSV/CSV/GTF path, or a DataFrame"
        )
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".gtf"):
        return _read_gtf(path)
    if name.endswith((".gff", ".gff3")):
        raise ValueError(f"{path} looks like GFF3, which is not supported; pass a GTF or a TSV with a tss column")
    sep = "," if name.endswith(".csv") else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    return _standardise_tss(table, str(path))


def _standardise_tss(table: pd.DataFrame, what: str) -> pd.DataFrame:
    chrom_col = _first_column(table.columns, _CHROM_COLUMNS)
    has_names = [c for c in ("gene_name", "gene_id") if c in table.columns]
    if chrom_col is None or not has_names:
        raise ValueError(
            f"{what} needs a chromosome column (one of {list(_CHROM_COLUMNS)}) and gene_name and/or "
            f"gene_id; its columns are {list(table.columns)}"
        )
    if "tss" in table.columns:
        tss = pd.to_numeric(table["tss"], errors="coerce")
        strand = table["strand"].astype(str) if "strand" in table.columns else pd.Series(".", index=table.index)
    elif {"start", "end", "strand"} <= set(table.columns):
        strand = table["strand"].astype(str)
        start = pd.to_numeric(table["start"], errors="coerce")
        end = pd.to_numeric(table["end"], errors="coerce")
        tss = start.where(strand != "-", end)
    else:
        raise ValueError(
            f"{what} needs a 'tss' column, or 'start', 'end' and 'strand' to derive it; its columns are "
            f"{list(table.columns)}"
        )
    out = pd.DataFrame(
        {
            "chrom": table[chrom_col].astype(str).str.strip().to_numpy(dtype=object),
            "tss": tss.to_numpy(dtype=np.float64),
            "strand": strand.str.strip().replace({"": "."}).to_numpy(dtype=object),
        }
    )
    for col in ("gene_id", "gene_name"):
        values = table[col] if col in table.columns else pd.Series("", index=table.index)
        out[col] = values.fillna("").astype(str).str.strip().to_numpy(dtype=object)
    if "gene_type" in table.columns:
        out["gene_type"] = table["gene_type"].fillna("").astype(str).to_numpy(dtype=object)

    bad_tss = ~np.isfinite(out["tss"].to_numpy()) | (out["tss"].to_numpy() < 1)
    bad_tss |= out["tss"].to_numpy() != np.floor(out["tss"].to_numpy())
    if bad_tss.any():
        raise ValueError(
            f"{int(bad_tss.sum())} rows of {what} have no valid TSS (a positive whole 1-based position), "
            f"e.g. rows {np.flatnonzero(bad_tss)[:3].tolist()}"
        )
    bad_strand = ~out["strand"].isin(["+", "-", "."]).to_numpy()
    if bad_strand.any():
        found = sorted(set(out.loc[bad_strand, "strand"]))[:5]
        raise ValueError(f"{what} has strand values {found}; allowed: '+', '-' or '.'")
    out["tss"] = out["tss"].astype(np.int64)
    return out.reset_index(drop=True)


def _read_gtf(path: Path) -> pd.DataFrame:
    cols = ["seqname", "source", "feature", "start", "end", "score", "strand", "frame", "attribute"]
    gtf = pd.read_csv(path, sep="\t", comment="#", header=None, names=cols, dtype=str, quoting=3)
    if gtf.empty:
        raise ValueError(f"GTF {path} has no records")
    features = gtf["feature"]
    use = "transcript" if (features == "transcript").any() else "gene"
    rows = gtf[features == use]
    if rows.empty:
        raise ValueError(
            f"GTF {path} has no 'transcript' or 'gene' rows (features: {sorted(set(features))[:8]}); "
            "a TSS cannot be derived"
        )
    attributes = rows["attribute"].fillna("")

    def attribute(key: str) -> pd.Series:
        return attributes.str.extract(rf'(?:^|;)\s*{key}\s+"?([^";]*)"?', expand=False).fillna("")

    gene_id = attribute("gene_id")
    gene_name = attribute("gene_name")
    gene_type = attribute("gene_type")
    gene_type = gene_type.where(gene_type != "", attribute("gene_biotype"))  # Ensembl GTFs say gene_biotype
    if (gene_id == "").all():
        raise ValueError(f"GTF {path}: no gene_id attribute in its {use} rows")
    table = pd.DataFrame(
        {
            "chrom": rows["seqname"].to_numpy(),
            "start": rows["start"].to_numpy(),
            "end": rows["end"].to_numpy(),
            "strand": rows["strand"].to_numpy(),
            "gene_id": gene_id.to_numpy(),
            "gene_name": gene_name.to_numpy(),
            "gene_type": gene_type.to_numpy(),
        }
    )
    out = _standardise_tss(table, f"GTF {path}")
    return out.drop_duplicates(["gene_id", "tss"]).reset_index(drop=True)


def gene_tss(
    genes: str | Sequence[str],
    tss_table: str | Path | pd.DataFrame = "GRCh38",
    *,
    var: pd.DataFrame | None = None,
    errors: str = "ignore",
) -> dict[str, pd.DataFrame]:
    """The TSS rows of each requested gene.

    A gene is matched, in this order, by (1) the Ensembl id in ``var["gene_ids"]`` of an RNA
    ``var`` indexed by gene names, when that id is in the table; (2) ``gene_name``;
    (3) ``gene_id`` (a version suffix such as ``.12`` is ignored); (4) ``gene_name`` ignoring case.
    The first rule that finds rows wins.

    Parameters
    ----------
    genes
        Gene names (or Ensembl ids).
    tss_table
        Anything :func:`load_tss` accepts; default the bundled GRCh38 table.
    var
        Optional RNA ``var``; its ``gene_ids`` column maps names (e.g. made unique as ``TBCE-1``)
        to Ensembl ids.
    errors
        ``"ignore"`` (default): unmatched genes get an empty frame. ``"raise"``: a ValueError
        names up to 5 unmatched genes.

    Returns
    -------
    dict[str, pandas.DataFrame]
        One entry per requested gene, in order. Each frame has the :func:`load_tss` columns,
        one row per unique (chrom, tss, strand), sorted; it is empty when the gene was not found.
        Each frame can be passed straight to :func:`tss_distance`.
    """
    if errors not in ("raise", "ignore"):
        raise ValueError(f"errors={errors!r}; allowed: 'ignore' or 'raise'")
    if isinstance(genes, str):
        genes = [genes]
    table = _bundled_tss() if isinstance(tss_table, str) and tss_table.lower() in ("grch38", "hg38") else None
    if table is None:
        table = load_tss(tss_table)
    by_name = table.groupby("gene_name", sort=False).indices
    ids = table["gene_id"].astype(str).str.replace(r"\.\d+$", "", regex=True)
    by_id = ids.groupby(ids, sort=False).indices
    by_upper: dict[str, np.ndarray] | None = None
    var_ids: dict[str, str] = {}
    if var is not None and "gene_ids" in var.columns:
        var_ids = dict(zip(var.index.astype(str), var["gene_ids"].astype(str), strict=True))

    out: dict[str, pd.DataFrame] = {}
    missing = []
    for gene in genes:
        gene = str(gene)
        rows = None
        vid = var_ids.get(gene)
        if vid is not None:
            rows = by_id.get(re.sub(r"\.\d+$", "", vid))
        if rows is None:
            rows = by_name.get(gene)
        if rows is None:
            rows = by_id.get(re.sub(r"\.\d+$", "", gene))
        if rows is None:
            if by_upper is None:
                upper = table["gene_name"].astype(str).str.upper()
                by_upper = upper.groupby(upper, sort=False).indices
            rows = by_upper.get(gene.upper())
        if rows is None:
            missing.append(gene)
            rows = np.empty(0, dtype=np.int64)
        frame = table.iloc[np.sort(rows)].drop_duplicates(["chrom", "tss", "strand"])
        out[gene] = frame.sort_values(["chrom", "tss"]).reset_index(drop=True)
    if missing and errors == "raise":
        raise ValueError(
            f"{len(missing)} of {len(out)} genes have no TSS in the table, e.g. {missing[:5]}; they were "
            "matched by var['gene_ids'], gene_name, gene_id and case-insensitive gene_name"
        )
    return out


def tss_distance(peaks: pd.DataFrame, tss: pd.DataFrame) -> np.ndarray:
    """Signed distance in bp from each peak to the nearest TSS of one gene.

    The distance is 0 when the TSS base lies inside the peak, else the number of bases from the
    TSS base to the nearest peak base (peaks 0-based half-open, TSS 1-based, so a TSS ``p`` is
    base ``p - 1``). It is positive when the peak lies downstream of the TSS, in the direction
    of transcription (higher coordinates on ``+``, lower on ``-``; strand ``.`` counts as
    ``+``), and negative upstream. Among several TSSs the nearest one wins (ties: the
    downstream value).

    Parameters
    ----------
    peaks
        Columns ``chrom``, ``start``, ``end`` (as from :func:`parse_peak_coordinates`).
    tss
        Rows for one gene, columns ``chrom``, ``tss``, ``strand`` (a value of
        :func:`gene_tss`).

    Returns
    -------
    numpy.ndarray
        float64, shape (n_peaks,); NaN for peaks on chromosomes without a TSS of the gene (all
        NaN when ``tss`` is empty).
    """
    for name, frame, need in (("peaks", peaks, ("chrom", "start", "end")), ("tss", tss, ("chrom", "tss", "strand"))):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks columns {missing}; it needs {list(need)}")
    chrom = peaks["chrom"].to_numpy(dtype=object)
    start = peaks["start"].to_numpy(dtype=np.int64)
    last = peaks["end"].to_numpy(dtype=np.int64) - 1
    best = np.full(len(peaks), np.nan)
    for ch, rows in tss.groupby("chrom", sort=False):
        on = np.flatnonzero(chrom == ch)
        if len(on) == 0:
            continue
        s, e = start[on], last[on]
        best_abs = np.full(len(on), np.inf)
        best_d = np.full(len(on), np.nan)
        for p, strand in zip(rows["tss"].to_numpy(dtype=np.int64), rows["strand"].to_numpy(), strict=True):
            t = p - 1
            d = np.where(t < s, s - t, np.where(t > e, e - t, 0)).astype(np.float64)
            if strand == "-":
                d = 0.0 - d  # not -d: keeps 0 as +0.0
            a = np.abs(d)
            take = (a < best_abs) | ((a == best_abs) & (d > best_d))
            best_abs = np.where(take, a, best_abs)
            best_d = np.where(take, d, best_d)
        best[on] = best_d
    return best


# --------------------------------------------------------------------------- motifs


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


def _tf_names(motif_name: str) -> list[str]:
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
    return [m for m in motifs if target in _tf_names(m.name)]


# --------------------------------------------------------------------------- FASTA


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
    """name -> (length, offset, linebases, linewidth), from ``path.fai`` or one pass over the file."""
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
        motifs = [m for m in motifs if wanted & set(_tf_names(m.name))]
    sequences = read_fasta_regions(fasta, coords)
    matrix = scan_motifs(sequences, motifs, threshold=threshold, pseudocount=pseudocount)
    return MotifMatches(matrix, coords.index, [m.matrix_id for m in motifs], [m.name for m in motifs])
