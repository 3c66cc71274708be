"""Held-out evaluation as the multiDGD paper measures it, behind ``multidgd evaluate``.

Modules
-------
heldout
    Splits (seeded, stratified), held-out metrics of a model, the unseen-batch and
    data-fraction experiments.
protocol
    :func:`run_evaluation`, the whole protocol as named steps.
report
    The report rows (:data:`REPORT_ROWS`, shared with the summary over seeds), figures
    and ``report.md``.
multivi
    MultiVI (scvi-tools, an optional extra imported only when used) on the same split.
scib
    scIB integration metrics of the latents (scib-metrics, an optional extra imported only
    when used) and the plain PCA baseline embedding.
"""

from . import heldout, multivi, protocol, report, scib
from .heldout import *  # noqa: F403 - the package re-exports its modules' public names
from .multivi import *  # noqa: F403
from .protocol import *  # noqa: F403
from .report import *  # noqa: F403
from .scib import *  # noqa: F403

__all__ = [*heldout.__all__, *protocol.__all__, *report.__all__, *multivi.__all__, *scib.__all__]
