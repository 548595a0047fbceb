"""`keras-rmac serve`: search an index over HTTP, with a web page."""

import argparse
import ipaddress
import logging
import os
import sys

from keras_rmac.cli import _common
from keras_rmac.display import display_path

logger = logging.getLogger(__name__)

TOKEN_ENV = "KERAS_RMAC_SERVE_TOKEN"

_EPILOG = f"""\
examples:
  keras-rmac serve --index photos_index
  {TOKEN_ENV}=s3cret keras-rmac serve --index photos_index --host 0.0.0.0

Open http://127.0.0.1:8080/ for the page, or use the JSON API:
  curl -F image=@query.jpg -F k=5 http://127.0.0.1:8080/api/search
  curl 'http://127.0.0.1:8080/api/photos/12/similar?k=5'

The model and the index are loaded once. When `keras-rmac index` updates
the index, the service switches to the new version between two queries.
It listens on 127.0.0.1 unless --host says otherwise; on any other
address every request must carry the token (--token, or ${TOKEN_ENV}) as
`Authorization: Bearer TOKEN` or `?token=TOKEN`.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `serve` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    parser = subparsers.add_parser(
        "serve",
        help="Serve an index: a JSON search API and a web page.",
        description=(
            "Load the index and its model once and answer searches over "
            "HTTP: by uploaded image or by indexed photo, with thumbnails, "
            "health and stats endpoints and a search page."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--index",
        required=True,
        metavar="INDEX_DIR",
        dest="index_dir",
        help="Index directory made by `keras-rmac index`.",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to listen on (default: 127.0.0.1, this machine only).",
    )
    parser.add_argument(
        "--port",
        type=_common.non_negative_int,
        default=8080,
        help="Port (default: 8080).",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"Token every request must carry (default: ${TOKEN_ENV}); "
        "required unless --host is a loopback address.",
    )
    parser.add_argument(
        "--max-pixels",
        type=_common.positive_int,
        default=None,
        metavar="N",
        help="Largest accepted width x height of an uploaded image "
        "(default: 100000000).",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=_common.positive_int,
        default=20,
        metavar="MB",
        help="Largest accepted request body, in MiB (default: 20).",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="How often to check for a new index version (default: 1).",
    )
    parser.add_argument(
        "--max-batch",
        type=_common.positive_int,
        default=8,
        metavar="N",
        help="Image queries waiting together that go through the network "
        "in one call (default: 8; 1: one at a time).",
    )
    parser.set_defaults(run=run)
    return parser


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac serve`; returns the exit status."""
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token:
        logger.error(
            "Listening on %s lets other machines in: give a token with "
            "--token or $%s (every request must then carry it).",
            args.host,
            TOKEN_ENV,
        )
        return 2
    try:
        import uvicorn

        from keras_rmac import serve
    except ImportError as exc:
        raise ImportError(
            f"{exc}; `keras-rmac serve` needs the serve extra: "
            "pip install 'keras-rmac[serve]'"
        ) from None
    config = serve.ServeConfig(
        token=token, max_upload_bytes=args.max_upload_mb * 1024 * 1024
    )
    if args.max_pixels:
        config.max_pixels = args.max_pixels
    engine = serve.SearchEngine(
        args.index_dir,
        poll_interval=max(args.poll_interval, 0.05),
        max_batch=args.max_batch,
    )
    snapshot = engine.snapshot
    print(
        f"Serving {len(snapshot)} photos of {display_path(args.index_dir)} "
        f"(version {snapshot.version}) on http://{args.host}:{args.port}/",
        file=sys.stderr,
    )
    uvicorn.run(
        serve.create_app(engine, config),
        host=args.host,
        port=args.port,
        log_level="warning",
    )
    return 0
