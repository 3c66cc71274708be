"""Gene-to-peak associations by in-silico silencing, with the analyses of the multiDGD paper.

For a gene and the cells that express it, :func:`gene2peak` silences the gene (its count set
to 0, the cell's representation moved along the gradient of that gene's loss) and reports, for
every peak (or gene) j, ``ΔX̂_j = X̂_j(z) − X̂_j(z_silenced)``: a **positive** ΔX̂ means the
peak loses accessibility when the gene is silenced (it "closes": a positive association).

Tables are tidy: one row per (gene, peak, group). The Spearman baseline
(:func:`spearman_gene2peak`) gives the same rows, so both can go through
:func:`link_enrichment`, :func:`tss_profile` and :func:`motif_enrichment`.

Between groups of cells, :func:`differential_test` tests each gene or peak on the decoded,
batch-corrected profiles (:meth:`multidgd.DGD.differential_expression` /
``differential_accessibility``); :func:`rank_genes_groups` gives its table scanpy's form.

Modules
-------
differential
    :func:`differential_test`, :func:`rank_genes_groups`.
cells
    The representations of an analysis's cells (the model's own, or new cells').
silencing
    :func:`gene2peak`.
baselines
    :func:`spearman_gene2peak`.
links
    :func:`link_peaks`: model-based link scores and the correlation baselines in one table.
enrichment
    :func:`link_enrichment`, :func:`tss_profile`, :func:`motif_enrichment`.
plots
    Figures of the tables and evaluations.
genome
    Peak coordinates, TSS tables (bundled GRCh38, GTF/TSV) and distances to TSSs.
fasta
    Region sequences from a FASTA file.
motifs
    JASPAR motifs, motif scans and the motif matches of peaks.
tables
    The tables' column conventions and the input checks the analyses share.
"""

from .baselines import spearman_gene2peak
from .differential import DIFFERENTIAL_COLUMNS, differential_test, rank_genes_groups
from .enrichment import LinkEvaluation, link_enrichment, motif_enrichment, tss_profile
from .fasta import read_fasta_regions
from .genome import (
    BUNDLED,
    PEAK_FORMATS,
    TSS_COLUMNS,
    TSS_GRCH38,
    gene_tss,
    load_tss,
    parse_peak_coordinates,
    tss_distance,
)
from .links import LINK_COLUMNS, LINK_METHODS, link_peaks
from .motifs import (
    JASPAR2024,
    Motif,
    MotifMatches,
    motif_matrix,
    motif_scores,
    motifs_for_gene,
    read_jaspar,
    scan_motifs,
)
from .plots import plot_differential, plot_gene2peak, plot_motif_enrichment, plot_tss_profile
from .silencing import gene2peak
from .tables import SCORE_COLUMNS

__all__ = [
    # differential expression and accessibility
    "DIFFERENTIAL_COLUMNS",
    "differential_test",
    "rank_genes_groups",
    "plot_differential",
    # gene-to-peak tables
    "gene2peak",
    "spearman_gene2peak",
    "SCORE_COLUMNS",
    # gene-peak links, model-based and baselines
    "link_peaks",
    "LINK_METHODS",
    "LINK_COLUMNS",
    # evaluations
    "link_enrichment",
    "LinkEvaluation",
    "tss_profile",
    "motif_enrichment",
    # figures
    "plot_gene2peak",
    "plot_tss_profile",
    "plot_motif_enrichment",
    # genome coordinates and annotation
    "parse_peak_coordinates",
    "load_tss",
    "gene_tss",
    "tss_distance",
    "read_fasta_regions",
    "BUNDLED",
    "TSS_GRCH38",
    "TSS_COLUMNS",
    "PEAK_FORMATS",
    # motifs
    "Motif",
    "read_jaspar",
    "motifs_for_gene",
    "motif_scores",
    "scan_motifs",
    "MotifMatches",
    "motif_matrix",
    "JASPAR2024",
]
