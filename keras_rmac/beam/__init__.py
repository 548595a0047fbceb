"""Extraction and index building on Apache Beam (extra `keras-rmac[beam]`).

- `ExtractDescriptors`: image paths (in `ShardSpec`s) -> descriptor shards
  written atomically and idempotently, the model loaded once per worker
  from its `.keras` file; unreadable files in the `dead_letter` output;
- `BuildIndexShards`: one search index per part, built in parallel (join
  them with `keras_rmac.search.ShardedIndex.from_shards`);
- `index_folder_on_beam`: `keras_rmac.indexing.index_folder` with those
  two steps on a Beam runner (`keras-rmac index --runner ...`).

Local paths are tested (DirectRunner, also multi-processing); Dataflow,
Flink and Spark are untested here (see the README).
"""

try:
    import apache_beam  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "keras_rmac.beam needs Apache Beam: pip install 'keras-rmac[beam]' "
        f"({exc})."
    ) from exc

from keras_rmac.beam.folder import index_folder_on_beam
from keras_rmac.beam.pipeline import DEAD_LETTER_FILE
from keras_rmac.beam.pipeline import make_options
from keras_rmac.beam.pipeline import run_extraction
from keras_rmac.beam.pipeline import run_index_build
from keras_rmac.beam.shards import ShardSpec
from keras_rmac.beam.shards import plan_shards
from keras_rmac.beam.transforms import DEAD_LETTER
from keras_rmac.beam.transforms import BuildIndexShards
from keras_rmac.beam.transforms import ExtractDescriptors
from keras_rmac.beam.transforms import describe_shard

__all__ = [
    "DEAD_LETTER",
    "DEAD_LETTER_FILE",
    "BuildIndexShards",
    "ExtractDescriptors",
    "ShardSpec",
    "describe_shard",
    "index_folder_on_beam",
    "make_options",
    "plan_shards",
    "run_extraction",
    "run_index_build",
]
