"""The settings of the training runs: `TrainConfig` and `RPNConfig`.

Standard library only: the command line reads their defaults for its
`--help` without importing TensorFlow.
"""

import dataclasses
import json

from keras_rmac.checks import check_int
from keras_rmac.checks import validate_anchor_args
from keras_rmac.defaults import DEFAULT_RATIOS
from keras_rmac.defaults import DEFAULT_SIZES
from keras_rmac.defaults import DEFAULT_TOP_N
from keras_rmac.defaults import NEGATIVE_MODES

OPTIMIZERS = ("adam", "sgd")

LOSSES = ("triplet", "contrastive", "ap")
"""Training objectives of `TrainConfig.loss`."""

DEFAULT_MARGINS = {"triplet": 0.1, "contrastive": 0.7}
"""The margin each pairwise loss uses when `TrainConfig.margin` is None."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs; see `train`.

    Data (exactly one of `train_list`, `train_dir`, `coil100`):
        train_list: CSV `path,label[,x0,y0,x1,y1]` (or a Google Landmarks
            train / train_clean CSV); see `triplets.read_image_list`.
        image_root: folder the CSV paths are relative to (default: the
            CSV's folder).
        train_dir: folder with one sub-folder of images per class.
        coil100: COIL-100 folder: trains on the project's train split.
        use_boxes: crop images to the CSV boxes. Defaults to False.

    Model:
        backbone, weights, levels, pooling, pca_dim: as in `RMACModel`.
        rpn_model: a `model.keras` of `train_rpn`: the descriptor pools the
            learned regions of its frozen RPN (backbone, preprocessing and
            proposals come from that file; `backbone`, `weights` and
            `levels` are then unused). Defaults to None (the grid).
        fixed_proposals: with `rpn_model`, keep the proposals fixed while
            the descriptor trains: when part of the backbone trains, the
            RPN reads a frozen copy of the backbone from the
            `trainable_from` cut to its output
            (`RMACModel(proposal_from=<that layer>)`; a fraction resolves
            to a layer name, moved back to the nearest layer a skip
            connection does not cross; None: the whole backbone), fed by
            the frozen prefix, with the weights the RPN was trained on.
            The cost: one more pass through the trained part of the
            backbone per image (at training and inference) and a copy of
            its weights in the saved model. False: no copy; the RPN reads
            the trained backbone's output, so its proposals move as the
            backbone trains. Unused without `rpn_model`. Defaults to True.
        trainable_from: first backbone layer trained (name), or fraction
            of the backbone frozen; None trains all.
        freeze_batchnorm: BatchNorm in inference mode with fixed
            scale/offset. Defaults to True.
        pca_images: images used to learn shift + PCA-whitening (0 skips
            it). Defaults to 1000.

    Images:
        image_size: side S in pixels. Defaults to 224.
        resize: "square" or "longest" (batch_size 1). Defaults to
            "square".
        augment: light augmentation. Defaults to True.
        cache_features: run the frozen part of the backbone (the layers
            before `trainable_from`, which must be a layer name) once per
            training image, keep its output in memory (and in
            `output_dir`), and train only the rest on it. Steps then cost
            the tail alone: on CPU, many times faster. Needs
            `augment=False` (a cached image has one version). Defaults to
            False.

    Optimisation:
        optimizer: "adam" or "sgd" (momentum 0.9). Defaults to "adam".
        learning_rate: Defaults to 1e-5.
        lr_decay: learning rate multiplied by this every epoch (exponential
            schedule on steps). Defaults to 1.0.
        weight_decay: Defaults to 0.
        loss: "triplet" (Gordo et al.'s margin loss on triplets),
            "contrastive" (Radenovic et al.'s loss on the same mined rows
            read as tuples: query, positive, `negatives_per_query`
            negatives) or "ap" (listwise quantised AP over class-balanced
            batches, Revaud et al. 2019; no mining). Defaults to
            "contrastive": on COIL-100, at the same budget of images, it
            beat the triplet loss on the validation split by more than
            the spread between seeds (`train_losses` in
            benchmarks/RESULTS.md).
        margin: margin of the triplet (squared distances) or contrastive
            (distances) loss; None takes `DEFAULT_MARGINS[loss]` (0.1 and
            0.7). Defaults to None.
        batch_size: triplets per step (global), for the triplet and
            contrastive losses. Defaults to 8.
        ap_bins: quantisation bins of the AP loss. Defaults to 20.
        classes_per_batch: P, classes per AP batch. Defaults to 8.
        images_per_class: K, images per class in an AP batch (a batch is
            P * K images; classes with fewer repeat images, ignored by
            the loss). Defaults to 4.
        chunk_size: AP loss: images per pass of the exact two-pass step
            (`keras_rmac.models.ListwiseModel`); None: one pass. Defaults
            to None.
        gradient_accumulation_steps: Defaults to None.
        epochs: Defaults to 10.
        steps_per_epoch: triplet table size = steps_per_epoch * batch_size.
            Defaults to 100.

    Mining:
        mining: hard-negative mining (else random triplets, redrawn every
            epoch). Defaults to True.
        mine_every_n_epochs: Defaults to 1.
        pool_size: images whose descriptors are extracted per mining
            round. Defaults to 2000.
        negatives_per_query: Defaults to 1.
        positive: "random" or "most_similar". Defaults to "random".
        negatives: "hardest" or "semihard" (only negatives less similar
            to the query than its positive; see
            `keras_rmac.data.mining.HardNegativeMiner`). Defaults to
            "hardest".
        index: mining search, a `keras_rmac.search.make_index` kind:
            "exact" or "fast" (ScaNN, for pools of hundreds of thousands
            of images); "scann" is the deprecated spelling of "fast".
            Defaults to "exact".

    Run:
        output_dir: where the log, checkpoints, bad-file list and final
            model go. Defaults to "rmac_training".
        checkpoint_every: steps between checkpoints. Defaults to 50.
        seed: Defaults to 0.
        num_workers: decoding threads. Defaults to 4.
        verbose: Keras fit verbosity. Defaults to 1.
    """

    train_list: str | None = None
    image_root: str | None = None
    train_dir: str | None = None
    coil100: str | None = None
    use_boxes: bool = False
    backbone: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    levels: int = 3
    pooling: str = "rmac"
    rpn_model: str | None = None
    fixed_proposals: bool = True
    pca_dim: int | None = None
    trainable_from: str | float | None = None
    freeze_batchnorm: bool = True
    pca_images: int = 1000
    image_size: int | None = 224
    resize: str = "square"
    augment: bool = True
    cache_features: bool = False
    optimizer: str = "adam"
    learning_rate: float = 1e-5
    lr_decay: float = 1.0
    weight_decay: float = 0.0
    loss: str = "contrastive"
    margin: float | None = None
    batch_size: int = 8
    ap_bins: int = 20
    classes_per_batch: int = 8
    images_per_class: int = 4
    chunk_size: int | None = None
    gradient_accumulation_steps: int | None = None
    epochs: int = 10
    steps_per_epoch: int = 100
    mining: bool = True
    mine_every_n_epochs: int = 1
    pool_size: int = 2000
    negatives_per_query: int = 1
    positive: str = "random"
    negatives: str = "hardest"
    index: str = "exact"
    output_dir: str = "rmac_training"
    checkpoint_every: int = 50
    seed: int = 0
    num_workers: int = 4
    verbose: int = 1

    def validate(self) -> None:
        """Raises ValueError naming the first invalid setting."""
        sources = [self.train_list, self.train_dir, self.coil100]
        if sum(s is not None for s in sources) != 1:
            raise ValueError(
                "Give exactly one training source: train_list (CSV), "
                "train_dir (folder per class) or coil100; got "
                f"train_list={self.train_list!r}, train_dir="
                f"{self.train_dir!r}, coil100={self.coil100!r}."
            )
        if self.loss not in LOSSES:
            raise ValueError(f"loss={self.loss!r}; choose one of {LOSSES}.")
        self._validate_loss()
        if self.negatives not in NEGATIVE_MODES:
            raise ValueError(
                f"negatives={self.negatives!r}; choose one of {NEGATIVE_MODES}."
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}."
            )
        positive = (
            "batch_size",
            "epochs",
            "steps_per_epoch",
            "checkpoint_every",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(
                    f"{name} must be >= 1, got {getattr(self, name)}."
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be > 0, got {self.learning_rate}."
            )
        if not isinstance(self.fixed_proposals, bool):
            raise ValueError(
                "fixed_proposals must be True or False, got "
                f"{self.fixed_proposals!r}."
            )
        if self.cache_features and (
            not isinstance(self.trainable_from, str) or self.augment
        ):
            raise ValueError(
                "cache_features=True needs trainable_from=<backbone layer "
                "name> (where the cached part ends) and augment=False; got "
                f"trainable_from={self.trainable_from!r}, "
                f"augment={self.augment}."
            )

    def _validate_loss(self) -> None:
        if self.margin is not None and not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}.")
        if self.loss != "ap":
            return
        minimum = {"ap_bins": 2, "classes_per_batch": 2, "images_per_class": 2}
        for name, low in minimum.items():
            if getattr(self, name) < low:
                raise ValueError(
                    f"{name} must be >= {low} for loss='ap', got "
                    f"{getattr(self, name)}."
                )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(
                f"chunk_size must be >= 1 or None, got {self.chunk_size}."
            )
        if not self.cache_features and (
            self.resize != "square" or not self.image_size
        ):
            raise ValueError(
                "loss='ap' batches P x K images: it needs resize='square' "
                f"and an image_size; got resize={self.resize!r}, "
                f"image_size={self.image_size!r}."
            )

    @property
    def loss_margin(self) -> float:
        """`margin`, or the default margin of `loss` when None.

        Example:

        >>> TrainConfig(train_dir="photos", loss="contrastive").loss_margin
        0.7
        """
        if self.margin is not None:
            return float(self.margin)
        return DEFAULT_MARGINS.get(self.loss, 0.0)

    @property
    def images_per_step(self) -> int:
        """Images one step trains on: `P * K` for "ap", else 3 per row.

        Example:

        >>> TrainConfig(train_dir="photos", batch_size=8).images_per_step
        24
        """
        if self.loss == "ap":
            return self.classes_per_batch * self.images_per_class
        return 3 * self.batch_size

    def to_json(self) -> str:
        """The settings as JSON (what `train` writes to `config.json`).

        Example:

        >>> config = TrainConfig(train_dir="photos", epochs=3)
        >>> config.validate()
        >>> import json
        >>> json.loads(config.to_json())["epochs"]
        3
        """
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


@dataclasses.dataclass
class RPNConfig:
    """Settings of `train_rpn`.

    Args:
        train_list: CSV with boxes (`path,label,x0,y0,x1,y1`, as
            `keras-rmac clean` writes).
        output_dir: folder of the model, log, checkpoint and cached
            feature maps (`rpn_features/`, kept for later runs; see
            `keras_rmac.training.rpn_features` for the disk it takes).
        image_root: folder the CSV paths are relative to. Defaults to the
            CSV's folder.
        backbone: backbone name. Defaults to "mobilenet_v2".
        weights: backbone weights ("imagenet", a file or None).
        image_size: longest side of the images, in pixels. Defaults to 512.
        sizes, ratios: anchors (`AnchorGenerator`).
        top_n: proposals pooled by the saved model. Defaults to 256.
        hidden: filters of the RPN head. Defaults to 256.
        epochs: passes over the images. Defaults to 10.
        learning_rate: Adam's. Defaults to 1e-3.
        anchors_per_image: anchors sampled per step. Defaults to 256.
        positive_fraction: most positives in a sample. Defaults to 0.5.
        positive_iou, negative_iou: IoU thresholds. Defaults 0.7 and 0.3.
        box_weight: weight of the box loss. Defaults to 1.0.
        checkpoint_every: steps between checkpoints. Defaults to 100.
        seed: Defaults to 0.
        num_workers: decoding threads. Defaults to 4.
        verbose: progress bar (0 or 1). Defaults to 0.
    """

    train_list: str
    output_dir: str
    image_root: str | None = None
    backbone: str = "mobilenet_v2"
    weights: str | None = "imagenet"
    image_size: int = 512
    sizes: tuple = DEFAULT_SIZES
    ratios: tuple = DEFAULT_RATIOS
    top_n: int = DEFAULT_TOP_N
    hidden: int = 256
    epochs: int = 10
    learning_rate: float = 1e-3
    anchors_per_image: int = 256
    positive_fraction: float = 0.5
    positive_iou: float = 0.7
    negative_iou: float = 0.3
    box_weight: float = 1.0
    checkpoint_every: int = 100
    seed: int = 0
    num_workers: int = 4
    verbose: int = 0

    def validate(self) -> None:
        """Raises ValueError naming the first invalid setting."""
        for name in (
            "image_size",
            "top_n",
            "hidden",
            "epochs",
            "anchors_per_image",
            "checkpoint_every",
        ):
            check_int(name, getattr(self, name))
        validate_anchor_args(self.sizes, self.ratios)
        if not 0.0 < self.positive_fraction <= 1.0:
            raise ValueError(
                "positive_fraction must be in (0, 1], got "
                f"{self.positive_fraction!r}."
            )
        if not 0.0 <= self.negative_iou <= self.positive_iou <= 1.0:
            raise ValueError(
                "Need 0 <= negative_iou <= positive_iou <= 1, got "
                f"negative_iou={self.negative_iou!r}, positive_iou="
                f"{self.positive_iou!r}."
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"learning_rate must be > 0, got {self.learning_rate!r}."
            )

    def rpn_options(self):
        """`RMACModel(rpn_options=...)` of the trained model."""
        return {
            "sizes": [float(s) for s in self.sizes],
            "ratios": [float(r) for r in self.ratios],
            "top_n": self.top_n,
            "hidden": self.hidden,
        }
