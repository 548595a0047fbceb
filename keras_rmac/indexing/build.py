"""The build step: a new searchable version of the index, beside the old.

`build_version` makes a search index (`keras_rmac.search.make_index`) of
every live descriptor in a fresh generation folder, with the model that
described them; `adopt_legacy` moves an unchanged keras_rmac 0.2.0
`searchable/` into generation 1 without rebuilding it (hard links). The
caller then switches the version marker (`layout.switch_to`).
"""

from __future__ import annotations

import shutil

import numpy as np

from keras_rmac import fileio
from keras_rmac.indexing import layout
from keras_rmac.search import make_index


def build_version(job, records) -> layout.Version:
    """A new generation holding the search index of `records` (live,
    readable, with descriptors) and the model; complete and fsynced."""
    settings = job.settings
    if records and not all(job.store.has_descriptor(r) for r in records):
        raise AssertionError("every live photo has a descriptor")
    descriptors = (
        job.store.descriptors(records)
        if records
        else np.zeros((0, job.dimension), np.float32)
    )
    options = {}
    if settings.mode == "compact":
        options["bytes_per_vector"] = settings.bytes_per_vector
    index = make_index(settings.mode, descriptors.shape[1], **options)
    if len(descriptors):
        index.add(
            descriptors,
            ids=np.arange(len(descriptors), dtype=np.int64),
            paths=[r.path for r in records],
        )
    index.metadata.update(
        {
            "photos_dir": job.photos_dir,
            "fingerprint": job.fingerprint,
            "max_size": settings.max_size,
            "scales": list(settings.scales),
            "draft_above": settings.draft_above,
            "dimension": job.dimension,
        }
    )
    version = layout.new_generation(job.index_dir)
    index.save(version.searchable)  # Written aside, fsynced, renamed in.
    layout.link_or_copy(job.model_path, version.model_path)
    fileio.fsync_tree(version.directory)
    return version


def adopt_legacy(job) -> layout.Version:
    """Generation 1 of a keras_rmac 0.2.0 index, from its `searchable/`."""
    legacy = layout.Version(job.index_dir, 0)
    version = layout.new_generation(job.index_dir)
    shutil.copytree(
        legacy.searchable,
        version.searchable,
        copy_function=layout.link_or_copy,
    )
    layout.link_or_copy(job.model_path, version.model_path)
    fileio.fsync_tree(version.directory)
    return version
