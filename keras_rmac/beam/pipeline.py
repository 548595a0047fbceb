"""Beam pipelines: describe shards of photos, build one index per part.

Each function builds a pipeline, runs it on the chosen runner with the
given Beam pipeline options, and waits for it. The runner is any Beam
runner: `DirectRunner` (tested here, also with
`--direct_num_workers=N --direct_running_mode=multi_processing`),
`DataflowRunner`, `FlinkRunner`, `SparkRunner` (untested here: see the
README).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from keras_rmac.beam.transforms import BuildIndexShards
from keras_rmac.beam.transforms import ExtractDescriptors

logger = logging.getLogger(__name__)

DEAD_LETTER_FILE = "dead_letter.jsonl"


def make_options(runner: str, pipeline_args: Sequence[str] = ()):
    """`PipelineOptions` for `runner` and extra Beam arguments.

    Args:
        runner: str. A Beam runner name (`"DirectRunner"` ...).
        pipeline_args: sequence of str. Beam pipeline options as on a
            command line (`--direct_num_workers=2`, `--project=...`).
            Workers log at WARNING unless
            `--default_sdk_harness_log_level` is given.

    Returns:
        `apache_beam.options.pipeline_options.PipelineOptions`.
    """
    args = [a for a in pipeline_args if not a.startswith("--runner")]
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        # Workers log INFO lines by default; quiet unless asked.
        args.append("--default_sdk_harness_log_level=WARNING")
    return PipelineOptions([f"--runner={runner}", *args])


def run_extraction(  # noqa: PLR0913 - one keyword per input of the job
    specs: Sequence,
    *,
    model_path: str,
    photos_dir: str,
    out_dir: str,
    options: dict,
    runner: str = "DirectRunner",
    pipeline_args: Sequence[str] = (),
) -> str:
    """Describes every shard of `specs` into `out_dir` (complete ones are
    skipped) and writes the unreadable files to `dead_letter.jsonl`.

    Args:
        specs: sequence of `ShardSpec` (`keras_rmac.beam.shards`).
        model_path: str. The `.keras` file of the `RMACModel`.
        photos_dir: str. The photo folder the specs' paths are relative to.
        out_dir: str. The shard folder.
        options: dict. See `keras_rmac.beam.transforms.describe_shard`.
        runner: str. Beam runner. Defaults to `"DirectRunner"`.
        pipeline_args: sequence of str. Beam pipeline options.

    Returns:
        The dead-letter file's path (one JSON object per line).
    """
    os.makedirs(out_dir, exist_ok=True)
    dead_letter = os.path.join(out_dir, DEAD_LETTER_FILE)
    with beam.Pipeline(options=make_options(runner, pipeline_args)) as p:
        outputs = (
            p
            | "Shards" >> beam.Create(list(specs))
            | "Extract"
            >> ExtractDescriptors(model_path, photos_dir, out_dir, options)
        )
        _ = (
            outputs.dead_letter
            | "Json" >> beam.Map(json.dumps, sort_keys=True)
            | "DeadLetter"
            >> beam.io.WriteToText(
                dead_letter, shard_name_template="", num_shards=1
            )
        )
    return dead_letter


def run_index_build(  # noqa: PLR0913 - one keyword per input of the job
    parts: Sequence[dict],
    *,
    kind: str,
    dimension: int,
    index_options: dict,
    metadata: dict,
    runner: str = "DirectRunner",
    pipeline_args: Sequence[str] = (),
) -> None:
    """Builds one index per part, in parallel (`BuildIndexShards`)."""
    with beam.Pipeline(options=make_options(runner, pipeline_args)) as p:
        _ = (
            p
            | "Parts" >> beam.Create(list(parts))
            | "Build"
            >> BuildIndexShards(kind, dimension, index_options, metadata)
        )
