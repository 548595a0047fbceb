"""`keras-rmac train`: fine-tune an R-MAC model (triplet, contrastive or
listwise AP loss)."""

import argparse
import logging

from keras_rmac import training
from keras_rmac.cli import _common

logger = logging.getLogger(__name__)

_EPILOG = """\
Examples:

  # A folder with one sub-folder of images per class (landmark / object):
  keras-rmac train --train-dir photos_by_class/ --out runs/rmac \\
      --epochs 10 --trainable-from block_13_expand

  # A cleaned list (keras-rmac clean), cropping each image to its box:
  keras-rmac train --train-list landmarks-clean.csv --use-boxes \\
      --out runs/landmarks --image-size 512 --resize longest --batch-size 1

  # On CPU: cache the frozen part of the backbone once, train the rest.
  keras-rmac train --coil100 ../shared/data/coil100 --out runs/coil \\
      --trainable-from block_15_expand --cache-features --no-augment

  # Listwise AP loss on batches of 16 classes x 8 images, two passes of 32:
  keras-rmac train --coil100 ../shared/data/coil100 --out runs/coil-ap \
      --trainable-from block_15_expand --cache-features --no-augment \
      --loss ap --classes-per-batch 16 --images-per-class 8 --chunk-size 32

Outputs in OUT: model.keras (the trained RMACModel, for `keras-rmac index
--model`), log.csv (loss per epoch), config.json, bad_files.txt and, while
training, backup/ (checkpoints). Interrupted? Run the same command again:
it resumes from the last checkpoint with the same data order.
"""

# (flag, TrainConfig field, type, help)
_OPTIONS = (
    ("--image-root", "image_root", str, "Folder CSV paths are relative to."),
    ("--pca-images", "pca_images", int, "Images to learn shift + PCA from."),
    ("--image-size", "image_size", int, "Side S of training images."),
    ("--resize", "resize", str, "'square' (SxS) or 'longest' (batch 1)."),
    ("--optimizer", "optimizer", str, "'adam' or 'sgd'."),
    ("--learning-rate", "learning_rate", float, "Learning rate."),
    ("--lr-decay", "lr_decay", float, "Learning-rate factor per epoch."),
    ("--weight-decay", "weight_decay", float, "Decoupled weight decay."),
    (
        "--margin",
        "margin",
        float,
        "Margin: triplet (squared distances, 0.1 if unset) or contrastive "
        "(distances, 0.7 if unset)",
    ),
    (
        "--batch-size",
        "batch_size",
        int,
        "Triplets per step (global; triplet and contrastive losses).",
    ),
    ("--ap-bins", "ap_bins", int, "AP loss: quantisation bins."),
    (
        "--classes-per-batch",
        "classes_per_batch",
        int,
        "AP loss: classes per batch (P).",
    ),
    (
        "--images-per-class",
        "images_per_class",
        int,
        "AP loss: images per class in a batch (K).",
    ),
    (
        "--chunk-size",
        "chunk_size",
        int,
        "AP loss: images per pass of the exact two-pass step (big batches).",
    ),
    (
        "--accumulate",
        "gradient_accumulation_steps",
        int,
        "Gradient accumulation steps.",
    ),
    ("--epochs", "epochs", int, "Epochs."),
    ("--steps-per-epoch", "steps_per_epoch", int, "Steps per epoch."),
    (
        "--mine-every",
        "mine_every_n_epochs",
        int,
        "Re-mine hard negatives every N epochs.",
    ),
    ("--pool-size", "pool_size", int, "Images searched per mining round."),
    (
        "--negatives-per-query",
        "negatives_per_query",
        int,
        "Hard negatives per query (one per class at most).",
    ),
    ("--positive", "positive", str, "'random' or 'most_similar'."),
    (
        "--negatives",
        "negatives",
        str,
        "'hardest', or 'semihard': only negatives less similar to the "
        "query than its positive (if hardest ones collapse training)",
    ),
    ("--index", "index", str, "Mining search: 'exact' or 'fast' (ScaNN)."),
    ("--checkpoint-every", "checkpoint_every", int, "Steps between backups."),
    ("--seed", "seed", int, "Seed of triplets, order and augmentation."),
    ("--workers", "num_workers", int, "Image decoding threads."),
    (
        "--rpn-model",
        "rpn_model",
        str,
        "Pool the learned regions of this `train-rpn` model.keras.",
    ),
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the `train` sub-command to an argparse `subparsers` object.

    Args:
        subparsers: the object returned by `parser.add_subparsers()`.

    Returns:
        The sub-command's parser (its `run` default is `run`).
    """
    defaults = training.TrainConfig()
    parser = subparsers.add_parser(
        "train",
        help="Fine-tune R-MAC (contrastive, triplet or AP loss).",
        description=(
            "Train an R-MAC model end to end with the triplet ranking loss "
            "(Gordo et al., IJCV 2017), the contrastive loss on mined tuples "
            "(Radenovic et al., 2018) or the listwise AP loss on "
            "class-balanced batches (Revaud et al., 2019): shift + "
            "PCA-whitening learned first, hard negatives re-mined with the "
            "current weights, checkpoints that resume after an interruption."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--train-list",
        metavar="CSV",
        help="`path,label[,x0,y0,x1,y1]` list (or Google Landmarks CSV).",
    )
    source.add_argument(
        "--train-dir", metavar="DIR", help="One sub-folder per class."
    )
    source.add_argument(
        "--coil100", metavar="DIR", help="COIL-100 folder (its train split)."
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="Run folder."
    )
    parser.add_argument(
        "--loss",
        choices=training.LOSSES,
        default=defaults.loss,
        help=f"Training objective (default: {defaults.loss}).",
    )
    for flag, field, kind, text in _OPTIONS:
        default = getattr(defaults, field)
        parser.add_argument(
            flag,
            dest=field,
            type=kind,
            default=None,
            metavar={int: "N", float: "X"}.get(kind, "NAME"),
            help=f"{text} (default: {default}).",
        )
    _common.add_network_arguments(parser, saved_model=False)
    parser.add_argument(
        "--trainable-from",
        default=None,
        metavar="LAYER|FRACTION",
        help="First backbone layer trained (name), or fraction of layers "
        "frozen (e.g. 0.8). Default: train all.",
    )
    parser.add_argument(
        "--use-boxes", action="store_true", help="Crop images to CSV boxes."
    )
    parser.add_argument(
        "--no-augment", action="store_true", help="No augmentation."
    )
    parser.add_argument(
        "--cache-features",
        action="store_true",
        help="Cache the frozen part of the backbone (needs --trainable-from "
        "NAME and --no-augment).",
    )
    parser.add_argument(
        "--no-mining", action="store_true", help="Random triplets only."
    )
    parser.add_argument(
        "--no-fixed-proposals",
        action="store_true",
        help="With --rpn-model: no frozen copy of the trained backbone "
        "layers for the RPN (saves a pass through them per image and "
        "their weights in the file; the proposals then move as the "
        "backbone trains).",
    )
    parser.add_argument(
        "--train-batchnorm",
        action="store_true",
        help="Let BatchNorm layers train (frozen by default).",
    )
    parser.set_defaults(run=run)
    return parser


def _trainable_from(value):
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return value


def config_from_args(args: argparse.Namespace) -> training.TrainConfig:
    """The `TrainConfig` of parsed `keras-rmac train` arguments."""
    config = training.TrainConfig(
        train_list=args.train_list,
        train_dir=args.train_dir,
        coil100=args.coil100,
        output_dir=args.out,
        loss=args.loss,
        trainable_from=_trainable_from(args.trainable_from),
        use_boxes=args.use_boxes,
        augment=not args.no_augment,
        cache_features=args.cache_features,
        mining=not args.no_mining,
        fixed_proposals=not args.no_fixed_proposals,
        freeze_batchnorm=not args.train_batchnorm,
        **_common.network_settings(args),
    )
    for _, field, _, _ in _OPTIONS:
        value = getattr(args, field)
        if value is not None:
            setattr(config, field, value)
    return config


def run(args: argparse.Namespace) -> int:
    """Runs `keras-rmac train` with parsed arguments.

    Args:
        args: the namespace from the parser built by `add_parser`.

    Returns:
        Exit status: 0 on success, 1 when the inputs or settings are wrong
        (the message is logged).
    """
    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as error:
        logger.error("%s", error)
        return 1
    logger.info("training with %s", config.to_json())
    try:
        result = training.train(config)
    except (ValueError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 1
    loss = result.history.get("loss", [])
    logger.info(
        "done in %.0f s; final loss %s; model: %s; %d unreadable image(s)",
        result.seconds,
        f"{loss[-1]:.4f}" if loss else "n/a",
        result.model_path,
        len(result.bad_files),
    )
    return 0
