"""Package-wide defaults a user sets once, as scanpy's and scvi-tools' ``settings``.

>>> import multidgd
>>> multidgd.settings.seed = 1            # DGD.train's seed when none is passed
>>> multidgd.settings.progress_bar = False  # no progress bars anywhere
>>> multidgd.settings.verbosity = "warning"  # only warnings from multidgd's loggers
>>> multidgd.settings.n_threads = 4        # torch's CPU threads
"""

from __future__ import annotations

import logging

import torch

__all__ = ["Settings", "settings"]

_LEVELS = ("debug", "info", "warning", "error")


class Settings:
    """Defaults of the whole package.

    Attributes
    ----------
    seed
        Seed of :meth:`multidgd.DGD.train` when its ``seed`` is None (a fresh run; a resumed
        run keeps its checkpoint's).
    progress_bar
        False hides every progress bar, whatever a call asks for.
    verbosity
        Level of the ``multidgd`` loggers: ``"debug"``, ``"info"``, ``"warning"`` or
        ``"error"``.
    n_threads
        torch's CPU threads (``torch.get_num_threads`` / ``set_num_threads``).
    """

    def __init__(self) -> None:
        self.seed: int = 0
        self.progress_bar: bool = True

    @property
    def verbosity(self) -> str:
        """The ``multidgd`` logger's level, by name."""
        return logging.getLevelName(logging.getLogger("multidgd").getEffectiveLevel()).lower()

    @verbosity.setter
    def verbosity(self, level: str) -> None:
        if str(level).lower() not in _LEVELS:
            raise ValueError(f"verbosity must be one of {list(_LEVELS)}, got {level!r}")
        logging.getLogger("multidgd").setLevel(str(level).upper())

    @property
    def n_threads(self) -> int:
        """Torch's CPU threads."""
        return torch.get_num_threads()

    @n_threads.setter
    def n_threads(self, n: int) -> None:
        if int(n) != n or n < 1:
            raise ValueError(f"n_threads must be a positive integer, got {n!r}")
        torch.set_num_threads(int(n))

    def shows_progress(self, asked: bool) -> bool:
        """Whether a progress bar a call asked for is shown."""
        return bool(asked) and self.progress_bar

    def __repr__(self) -> str:
        return (
            f"multidgd.settings(seed={self.seed}, progress_bar={self.progress_bar}, "
            f"verbosity={self.verbosity!r}, n_threads={self.n_threads})"
        )


#: The package's settings.
settings = Settings()
