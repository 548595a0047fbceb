"""Errors of `keras_rmac.indexing`."""

from keras_rmac.fileio import LockedError
from keras_rmac.search import IndexMismatchError

__all__ = ["IndexBusyError", "IndexMismatchError"]


class IndexBusyError(LockedError):
    """Another process is indexing into the same index directory."""
