"""multidgd: multiDGD, a deep generative decoder for paired single-cell RNA + ATAC counts."""

from . import analysis
from .config import ModelConfig, TrainConfig
from .model import DGD
from .mosaic import combine_mosaic
from .results import Clustering
from .settings import settings

__all__ = ["analysis", "DGD", "Clustering", "combine_mosaic", "ModelConfig", "TrainConfig", "settings", "__version__"]

__version__ = "0.1.0"
