"""`keras-rmac index`: index a folder of photos, incrementally."""

import argparse
import logging
import math
import os

from keras_rmac import indexing
from keras_rmac.cli import _common
from keras_rmac.data.pixel_limits import DEFAULT_DRAFT_ABOVE
from keras_rmac.data.pixel_limits import DEFAULT_MAX_PIXELS
from keras_rmac.search import KINDS

logger = logging.getLogger(__name__)

_EPILOG = """\
examples:
  keras-rmac index photos/ --index photos_index
  keras-rmac index photos/ --index photos_index --mode compact \\
      --bytes-per-vector 64 --max-size 512 --scales 1,0.707

Run it again after adding, editing or deleting photos: only new or changed
files are described, deleted ones are dropped. An interrupted run (even
kill -9) resumes where it stopped when started again. Unreadable files are
skipped and listed in INDEX_DIR/report.json.

Search with: keras-rmac search --index photos_index query.jpg

On Apache Beam (pip install 'keras-rmac[beam]'), Beam's own options after
the others:
  keras-rmac index photos/ --index photos_index --runner DirectRunner \
      --direct_num_workers=2 --direct_running_mode=multi_processing
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `index` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    parser = subparsers.add_parser(
        "index",
        help="Index a folder of photos (incremental, resumable).",
        description=(
            "Describe every photo under PHOTOS_DIR (recursively) with an "
            "R-MAC network and build a search index in INDEX_DIR."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("photos_dir", metavar="PHOTOS_DIR")
    parser.add_argument(
        "--index",
        required=True,
        metavar="INDEX_DIR",
        dest="index_dir",
        help="Index directory (created; reused by later runs).",
    )
    _common.add_model_arguments(parser)
    group = parser.add_argument_group("search index")
    group.add_argument(
        "--mode",
        choices=KINDS,
        default=None,
        help="'fast': ScaNN with float re-ranking; 'compact': ScaNN codes "
        "only (--bytes-per-vector bytes per photo); 'exact': brute force "
        "(default: fast, or what the index was built with).",
    )
    group.add_argument(
        "--bytes-per-vector",
        type=int,
        choices=indexing.BYTES_PER_VECTOR,
        default=None,
        help="Bytes per photo in compact mode (default: 64).",
    )
    group.add_argument(
        "--keep-descriptors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Keep the float descriptors in INDEX_DIR/.work (4*D bytes per "
        "photo on disk) so later runs describe only new or changed photos "
        "(default: keep).",
    )
    runtime = parser.add_argument_group("run")
    runtime.add_argument(
        "--hash",
        action="store_true",
        dest="hash_contents",
        help="Detect changed files by sha256 of their contents instead of "
        "modification time (reads every file on every run).",
    )
    runtime.add_argument(
        "--rebuild",
        action="store_true",
        help="Index everything afresh, aside, then switch to it (needed to "
        "change the model, --max-size or --scales of an index); the "
        "previous version stays searchable until then.",
    )
    runtime.add_argument(
        "--pca-images",
        type=_common.positive_int,
        default=1000,
        help="With --pca-dim: photos (evenly spaced) to learn the "
        "whitening from (default: 1000).",
    )
    runtime.add_argument(
        "--shard-size",
        type=_common.positive_int,
        default=256,
        help="Photos per committed shard of the work store (default: 256).",
    )
    runtime.add_argument(
        "--batch-size",
        type=_common.positive_int,
        default=8,
        help="Images per forward pass (default: 8).",
    )
    runtime.add_argument(
        "--workers",
        type=_common.non_negative_int,
        default=4,
        help="Image decoding threads; 0 decodes in the main thread "
        "(default: 4).",
    )
    runtime.add_argument(
        "-q", "--quiet", action="store_true", help="No progress bar."
    )
    add_max_pixels_argument(runtime, "an image")
    beam = parser.add_argument_group(
        "Apache Beam (pip install 'keras-rmac[beam]')"
    )
    beam.add_argument(
        "--runner",
        default=None,
        metavar="RUNNER",
        help="Describe the photos and build the index on this Beam runner "
        "(DirectRunner; DataflowRunner, FlinkRunner, SparkRunner untested "
        "here). Unknown options are passed to Beam as pipeline options "
        "(e.g. --direct_num_workers=2 --direct_running_mode="
        "multi_processing). Without --runner, nothing of Beam is used.",
    )
    beam.add_argument(
        "--index-shards",
        type=_common.positive_int,
        default=4,
        help="With --runner: parts of the search index, each built by one "
        "worker and searched together (default: 4).",
    )
    parser.set_defaults(run=run, takes_extra=_takes_extra)
    return parser


def _takes_extra(args) -> bool:
    """Unknown options are Beam pipeline options, with --runner only."""
    return args.runner is not None


def add_max_pixels_argument(parser, what: str) -> None:
    """`--max-pixels N`, of `index` (`what`: "an image") and `search`."""
    parser.add_argument(
        "--max-pixels",
        type=_common.positive_int,
        default=DEFAULT_MAX_PIXELS,
        metavar="N",
        help=f"Largest number of pixels (width x height) {what} may be "
        "decoded to; larger files are skipped as possible decompression "
        f"bombs (default: {DEFAULT_MAX_PIXELS:,}). JPEGs declaring more "
        "than 100 megapixels (108 and 200 MP phone photos) are decoded at "
        "reduced scale, to at least twice --max-size, and only that "
        "reduced size counts.",
    )


def allow_pixels(max_pixels: int) -> None:
    """Lets Pillow open images up to `max_pixels` when asked for more.

    Pillow refuses any image over twice `PIL.Image.MAX_IMAGE_PIXELS`
    (about 179 MP by default) whatever our own limit; `--max-pixels`
    above that raises Pillow's limit with it, so that such files (PNG,
    TIFF...) can be read when the user asks for them.
    """
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and (
        max_pixels > 2 * Image.MAX_IMAGE_PIXELS
    ):
        Image.MAX_IMAGE_PIXELS = math.ceil(max_pixels / 2)


def _adapt_pca(model, photos_dir: str, count: int, options: dict) -> None:
    """Learns shift + PCA-whitening on up to `count` photos of the folder,
    decoded with `options` (`load_images`'s `max_pixels`, `draft_size`,
    which is also the longest side, and `draft_above`)."""
    import numpy as np
    import tensorflow as tf

    from keras_rmac.data import image_io

    paths = image_io.list_images(photos_dir)
    if len(paths) > count:
        picks = np.linspace(0, len(paths) - 1, count).round().astype(int)
        paths = [paths[i] for i in sorted(set(picks))]
    logger.info(
        "Learning shift + PCA-whitening to %d dimensions on %d photos",
        model.pca_dim,
        len(paths),
    )

    def readable():
        for _, image in image_io.load_images(paths, **options):
            if not isinstance(image, image_io.ImageError):
                yield image

    dataset = tf.data.Dataset.from_generator(
        readable, output_signature=tf.TensorSpec((None, None, 3), tf.uint8)
    )
    model.adapt_pca(dataset, max_size=options["draft_size"])


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac index`; returns the exit status."""
    allow_pixels(args.max_pixels)
    index_dir = os.path.abspath(args.index_dir)
    settings = None if args.rebuild else indexing.recorded_settings(index_dir)
    # The index's own reduced-decoding threshold (100 MP for a new one).
    draft_above = (
        indexing.recorded_draft_above(settings)
        if settings is not None
        else DEFAULT_DRAFT_ABOVE
    )
    recorded_spec = (settings or {}).get("model_spec")
    spec = _common.model_spec(args, recorded_spec)
    reuse = (
        settings is not None
        and spec == recorded_spec
        and args.model is None
        and indexing.saved_model_path(index_dir) is not None
    )
    model = None  # None: the index's own model.keras.
    if not reuse:
        try:
            model = _common.build_model(spec)
        except (FileNotFoundError, TypeError, ValueError) as exc:
            logger.error("Cannot build the model: %s", exc)
            return 1
        if spec.get("pca_dim"):
            _adapt_pca(
                model,
                args.photos_dir,
                args.pca_images,
                {
                    "max_pixels": args.max_pixels,
                    "draft_size": args.max_size
                    or (settings or {}).get("max_size")
                    or indexing.DEFAULT_MAX_SIZE,
                    "draft_above": draft_above,
                },
            )
    index_folder = indexing.index_folder
    beam_options = {}
    if args.runner is not None:
        try:
            from keras_rmac.beam import index_folder_on_beam
        except ImportError as exc:
            logger.error("--runner: %s", exc)
            return 1
        index_folder = index_folder_on_beam
        beam_options = {
            "runner": args.runner,
            "pipeline_args": list(getattr(args, "extra", None) or []),
            "index_shards": args.index_shards,
        }
    try:
        report = index_folder(
            args.photos_dir,
            index_dir,
            indexing.IndexSettings(
                mode=args.mode,
                bytes_per_vector=args.bytes_per_vector,
                max_size=args.max_size,
                scales=args.scales,
                keep_descriptors=args.keep_descriptors,
                hash_contents=args.hash_contents,
                shard_size=args.shard_size,
                batch_size=args.batch_size,
                num_workers=args.workers,
                model_spec=spec,
                max_pixels=args.max_pixels,
                draft_above=draft_above,
            ),
            model=model,
            rebuild=args.rebuild,
            verbose=0 if args.quiet else 1,
            **beam_options,
        )
    except (
        indexing.IndexMismatchError,
        indexing.IndexBusyError,
        FileNotFoundError,
        NotADirectoryError,
    ) as exc:
        logger.error("%s", exc)
        return 1
    print(report.summary())
    point = _operating_point(index_dir)
    if point is not None:
        print(f"Search: {point.describe()}")
    print(f"Report: {os.path.join(index_dir, indexing.REPORT_FILE)}")
    return 0


def _operating_point(index_dir):
    """The measured operating point of the index's current version."""
    from keras_rmac.search import saved_operating_point

    try:
        version = indexing.current_version(index_dir)
        return saved_operating_point(version.searchable)
    except (OSError, ValueError, KeyError):
        return None  # Exact index, or nothing built yet.
