"""Rows of an on-disk CSR matrix, read on demand (an ``.h5mu``/``.h5ad`` opened backed).

Training from a backed file keeps in memory only what grows with the number of cells
anyway (the row pointers, library sizes, labels and the representation tables); count
rows are read per minibatch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

__all__ = ["BackedCSR", "backed_group"]


def backed_group(x):
    """Return the HDF5/zarr group of a backed sparse dataset (anndata), or None for in-memory data.

    Parameters
    ----------
    x
        A matrix: an anndata sparse dataset, or anything else.

    Returns
    -------
    group or None
        The group holding ``data``, ``indices`` and ``indptr``, or None.
    """
    group = getattr(x, "group", None)
    if group is None or not all(k in group for k in ("data", "indices", "indptr")):
        return None
    return group


class BackedCSR:
    """A CSR matrix on disk, optionally restricted to some rows (in a given order) and columns.

    Parameters
    ----------
    group
        Group holding ``data``, ``indices`` and ``indptr`` of a CSR matrix.
    n_cols
        Columns of the stored matrix.
    rows
        Stored rows, in the order this matrix presents them (default all).
    cols
        Stored columns to keep, in order (default all).
    """

    def __init__(self, group, n_cols: int, *, rows: np.ndarray | None = None, cols: np.ndarray | None = None):
        self._indptr = np.asarray(group["indptr"][...], dtype=np.int64)
        self._data = group["data"]
        self._indices = group["indices"]
        self._n_cols = int(n_cols)
        self._rows = np.arange(len(self._indptr) - 1) if rows is None else np.asarray(rows, dtype=np.int64)
        self._cols = None if cols is None else np.asarray(cols, dtype=np.int64)
        self._row_sums: np.ndarray | None = None
        self.dtype = np.dtype(np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) presented."""
        return len(self._rows), self._n_cols if self._cols is None else len(self._cols)

    @property
    def index_nbytes(self) -> int:
        """Bytes of the row index held in memory (row pointers, row selection, cached sums)."""
        return sum(a.nbytes for a in (self._indptr, self._rows, self._row_sums) if a is not None)

    def subset(self, rows: np.ndarray | None = None) -> BackedCSR:
        """Restrict the matrix to some of its rows.

        Parameters
        ----------
        rows
            Positions or a boolean mask of this matrix's rows.

        Returns
        -------
        BackedCSR
            The same stored matrix, presenting only ``rows`` (in that order).
        """
        rows = np.asarray(rows)
        pos = np.flatnonzero(rows) if rows.dtype == bool else rows
        out = BackedCSR.__new__(BackedCSR)
        out.__dict__.update(self.__dict__)
        out._rows = self._rows[pos]
        out._row_sums = None if self._row_sums is None else self._row_sums[pos]
        return out

    def _read_sorted_unique(self, stored: np.ndarray) -> sp.csr_matrix:
        """Read stored rows (sorted, unique) as CSR: one read per run of consecutive rows."""
        starts, ends = self._indptr[stored], self._indptr[stored + 1]
        breaks = np.flatnonzero(np.diff(stored) != 1) + 1
        run_first = np.r_[0, breaks]
        run_last = np.r_[breaks - 1, len(stored) - 1] if len(stored) else run_first
        data, indices = [], []
        for a, b in zip(run_first, run_last, strict=True):
            lo, hi = starts[a], ends[b]
            if hi > lo:
                data.append(np.asarray(self._data[lo:hi], dtype=np.float32))
                indices.append(np.asarray(self._indices[lo:hi], dtype=np.int64))
        indptr = np.r_[0, np.cumsum(ends - starts)]
        return sp.csr_matrix(
            (
                np.concatenate(data) if data else np.zeros(0, np.float32),
                np.concatenate(indices) if indices else np.zeros(0, np.int64),
                indptr,
            ),
            shape=(len(stored), self._n_cols),
        )

    def _read(self, rows, merge: bool) -> sp.csr_matrix:
        """Read rows (positions, a slice or a boolean mask) in the order asked; ``merge`` sums duplicates."""
        if isinstance(rows, slice):
            rows = np.arange(len(self._rows))[rows]
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        stored = self._rows[rows]
        unique, inverse = np.unique(stored, return_inverse=True)
        out = self._read_sorted_unique(unique)
        if len(unique) != len(stored) or (np.diff(stored) < 0).any():
            out = out[inverse]
        if self._cols is not None:
            out = out[:, self._cols]
        if merge:
            out.sum_duplicates()  # sorts the indices; a position stored twice counts once, summed
        else:
            out.sort_indices()
        return out

    def __getitem__(self, rows) -> sp.csr_matrix:
        """Read rows (positions, a slice or a boolean mask) as an in-memory float32 CSR, in the order asked.

        A (row, column) position the file stores more than once is returned once, its values
        summed (as ``scipy.sparse.csr_matrix.sum_duplicates`` does); the file is not changed.
        """
        return self._read(rows, merge=True)

    def chunks(self, size: int = 8192, *, as_stored: bool = False):
        """Iterate over all rows in blocks, in order.

        Parameters
        ----------
        size
            Rows per block.
        as_stored
            Keep duplicate entries as the file stores them (default: summed, as by indexing).

        Yields
        ------
        tuple of (int, scipy.sparse.csr_matrix)
            The first row of the block and the block.
        """
        for start in range(0, self.shape[0], size):
            yield start, self._read(np.arange(start, min(start + size, self.shape[0])), merge=not as_stored)

    def read_row_sums(self, check: Callable[[sp.csr_matrix], object] | None = None) -> np.ndarray:
        """Read every row once to total it, and cache the totals.

        Parameters
        ----------
        check
            Called with each block of rows as stored, duplicate entries included (e.g. to
            validate the values); it may raise.

        Returns
        -------
        numpy.ndarray
            (n,) float64 row totals.
        """
        out = np.empty(self.shape[0], dtype=np.float64)
        for start, block in self.chunks(as_stored=True):
            if check is not None:
                check(block)
            out[start : start + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
        self._row_sums = out
        return out

    def row_sums(self) -> np.ndarray:
        """Return the (n,) row totals, read once and cached.

        Returns
        -------
        numpy.ndarray
            (n,) float64 row totals.
        """
        if self._row_sums is None:
            return self.read_row_sums()
        return self._row_sums

    def sum(self, axis=None):
        """Return row totals as an (n, 1) array for ``axis=1`` (what the initialisation uses).

        Parameters
        ----------
        axis
            Must be 1.

        Returns
        -------
        numpy.ndarray
            (n, 1) row totals.
        """
        if axis != 1:
            raise NotImplementedError("a backed matrix sums over rows only (axis=1)")
        return self.row_sums()[:, None]
