"""Genome coordinates and annotation for gene-to-peak analysis: peaks and transcription start sites.

Coordinate conventions
----------------------
* Peaks (``start``/``end``) are BED-like: 0-based, half-open. ``chr1:100-200`` (10x, ArchR,
  Signac names and ``interval`` columns) covers the 100 bases with 0-based indices 100..199.
* TSS positions (``tss``) are 1-based, as in Ensembl and GTF files: a TSS at ``p`` is the base
  with 0-based index ``p - 1``.

The bundled human table (``load_tss("GRCh38")``) holds Ensembl release 93 transcript start
sites; see ``multidgd/bundled/README.md`` for where it comes from and its licence. Sequences
are read by :mod:`multidgd.analysis.fasta` and motifs scanned by :mod:`multidgd.analysis.motifs`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "parse_peak_coordinates",
    "load_tss",
    "gene_tss",
    "tss_distance",
]

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"
TSS_GRCH38 = BUNDLED / "tss_grch38_ensembl93.tsv.gz"

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
    """Load a table of transcription start sites.

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
    """Find the TSS rows of each requested gene.

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
