"""Beam transforms: descriptors of image files, and one index per shard.

`ExtractDescriptors` turns a `PCollection` of `ShardSpec`s into descriptor
shards on disk (`keras_rmac.beam.shards`): each worker loads the model
once from its `.keras` file (`DoFn.setup`), decodes and describes a
shard's files in batches exactly as the folder indexer does (same
decoding, same batches, multi-resolution as `RMACModel.extract`), writes
the shard atomically, and skips a shard already complete. Unreadable
files go to the `dead_letter` output as `{"path", "reason"}` with the
folder indexer's reasons.

`BuildIndexShards` builds one search index per part of the descriptors
(`make_index`), in parallel across workers, each saved atomically;
`keras_rmac.search.ShardedIndex.from_shards` then joins them.

Paths are local paths: other file systems (`gs://`, `s3://` through
`tf.io.gfile`) are not supported by the decoder used here, and untested.
"""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import numpy as np

from keras_rmac.beam import shards

logger = logging.getLogger(__name__)

DEAD_LETTER = "dead_letter"
"""The tag of the unreadable files' output."""

# A descriptor farther than this from unit norm (a blank image's all-zero
# descriptor) is refused, as the folder indexer refuses it.
_NORM_TOLERANCE = 1e-3


def describe_shard(model, photos_dir: str, spec, options: dict):
    """Records and descriptors of a shard's files, as the folder indexer's.

    Args:
        model: the `RMACModel`.
        photos_dir: str. The folder the shard's paths are relative to.
        spec: `ShardSpec`.
        options: dict with `max_size`, `scales`, `batch_size`,
            `num_workers`, `max_pixels`, `draft_above`, `dimension`.

    Returns:
        `(records, descriptors)`: one JSON record per file (with `error`
        for an unreadable one), float32 `(readable, D)`.
    """
    from keras_rmac.data import image_io
    from keras_rmac.indexing.extract import decode_options
    from keras_rmac.indexing.extract import extract_images

    batch_size = options["batch_size"]

    def run(images):
        return extract_images(
            model, images, options["max_size"], options["scales"], batch_size
        )

    records, images, descriptors = [], [], []
    loader = image_io.load_images(
        [os.path.join(photos_dir, e[0]) for e in spec.entries],
        num_workers=options["num_workers"],
        **decode_options(
            options["max_size"],
            options["scales"],
            options["max_pixels"],
            options["draft_above"],
        ),
    )
    for i, result in loader:
        path, size, mtime_ns, sha256 = spec.entries[i]
        record = {"path": path, "size": size, "mtime_ns": mtime_ns}
        if sha256 is not None:
            record["sha256"] = sha256
        if isinstance(result, image_io.ImageError):
            record["error"] = result.reason
        else:
            images.append(result)
            if len(images) == batch_size:  # Batches aligned to the shard.
                descriptors.append(run(images))
                images = []
        records.append(record)
    if images:
        descriptors.append(run(images))
    dimension = options["dimension"]
    x = (
        np.concatenate(descriptors).astype(np.float32)
        if descriptors
        else np.zeros((0, dimension), np.float32)
    )
    norms = np.linalg.norm(x, axis=1)
    bad = np.abs(norms - 1.0) > _NORM_TOLERANCE
    ok = [r for r in records if "error" not in r]
    for record, is_bad, norm in zip(ok, bad, norms):
        if is_bad:
            record["error"] = (
                f"descriptor has norm {norm:.3g} instead of 1 (a blank or "
                "featureless image?); not indexed"
            )
    return records, x[~bad]


class ExtractShardFn(beam.DoFn):
    """Describes one `ShardSpec` into `out_dir` (skipped when complete).

    Main output: the shard number. `dead_letter` output: a dict
    `{"path", "reason"}` per unreadable file (also for shards already
    complete, so every run's dead-letter output is whole).

    Args:
        model_path: str. The `.keras` file of the `RMACModel` (loaded once
            per worker, in `setup`).
        photos_dir: str. The photo folder (local path).
        out_dir: str. Where the shards are written.
        options: dict. See `describe_shard`.
    """

    def __init__(self, model_path: str, photos_dir: str, out_dir: str, options):
        super().__init__()
        self.model_path = model_path
        self.photos_dir = photos_dir
        self.out_dir = out_dir
        self.options = dict(options)
        self._model = None
        self._described = beam.metrics.Metrics.counter("keras_rmac", "images")
        self._skipped = beam.metrics.Metrics.counter("keras_rmac", "reused")

    def setup(self):
        from keras_rmac.models.loading import load_rmac_model

        self._model = load_rmac_model(self.model_path)

    def process(self, spec):
        records = shards.read_records(self.out_dir, spec)
        if records is None:
            records, descriptors = describe_shard(
                self._model, self.photos_dir, spec, self.options
            )
            shards.write_shard(self.out_dir, spec, records, descriptors)
            self._described.inc(len(records))
        else:
            self._skipped.inc(len(records))
        for record in records:
            if "error" in record:
                yield beam.pvalue.TaggedOutput(
                    DEAD_LETTER,
                    {"path": record["path"], "reason": record["error"]},
                )
        yield spec.number


class ExtractDescriptors(beam.PTransform):
    """`PCollection[ShardSpec]` -> descriptor shards written in `out_dir`.

    Returns a `DoOutputsTuple`: `.shards` (the shard numbers done) and
    `.dead_letter` (`{"path", "reason"}` of every unreadable file).

    Args:
        model_path: str. The `.keras` file of the `RMACModel`.
        photos_dir: str. The photo folder (local path).
        out_dir: str. The shard folder.
        options: dict. See `describe_shard`.
    """

    def __init__(self, model_path, photos_dir, out_dir, options):
        super().__init__()
        self.fn = ExtractShardFn(model_path, photos_dir, out_dir, options)

    def expand(self, specs):
        return (
            specs
            # Spread the shards over the workers.
            | "Spread" >> beam.Reshuffle()
            | "Describe"
            >> beam.ParDo(self.fn).with_outputs(DEAD_LETTER, main="shards")
        )


class BuildIndexShardFn(beam.DoFn):
    """Builds and saves one search index per part (skipped when saved).

    Input: a dict `{"number", "key", "vectors", "ids", "paths",
    "target"}`: `.npy` files of the part's float32 descriptors and int64
    ids, its paths (list or None), the index folder to write. Output:
    `(number, target)`.

    Args:
        kind: str. `make_index` kind of each part.
        dimension: int. Descriptor dimension.
        index_options: dict. Options of `make_index`.
        metadata: dict. Metadata of every part (with the model
            fingerprint).
    """

    def __init__(self, kind, dimension, index_options, metadata):
        super().__init__()
        self.kind = kind
        self.dimension = int(dimension)
        self.index_options = dict(index_options)
        self.metadata = dict(metadata)

    def process(self, part):
        from keras_rmac.search import load_index
        from keras_rmac.search import make_index
        from keras_rmac.search import storage

        target = part["target"]
        if storage.is_index_directory(target):
            saved = load_index(target)
            if saved.metadata.get("part_key") == part["key"]:
                yield part["number"], target
                return
        index = make_index(
            self.kind,
            self.dimension,
            **self.index_options,
            metadata={**self.metadata, "part_key": part["key"]},
        )
        x = np.load(part["vectors"], mmap_mode="r")
        index.add(np.asarray(x), ids=np.load(part["ids"]), paths=part["paths"])
        index.save(target)  # Atomic: a killed build leaves no part.
        yield part["number"], target


class BuildIndexShards(beam.PTransform):
    """`PCollection` of parts -> one saved index per part, in parallel.

    Args: as `BuildIndexShardFn`.
    """

    def __init__(self, kind, dimension, index_options, metadata):
        super().__init__()
        self.fn = BuildIndexShardFn(kind, dimension, index_options, metadata)

    def expand(self, parts):
        return parts | "Spread" >> beam.Reshuffle() | beam.ParDo(self.fn)
