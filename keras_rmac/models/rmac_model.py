"""The R-MAC descriptor network of Gordo et al. (2017) as a Keras model."""

import hashlib
import itertools
import json
import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_rmac.backbones import build_backbone
from keras_rmac.backbones import graph_signature
from keras_rmac.backbones import update_with_weights
from keras_rmac.data import image_io
from keras_rmac.defaults import POOLINGS
from keras_rmac.layers.gem_pooling import GeMPooling
from keras_rmac.layers.l2_normalize import L2Normalize
from keras_rmac.layers.mac_pooling import MACPooling
from keras_rmac.layers.preprocess import Preprocess
from keras_rmac.layers.shift_pca import ShiftPCA
from keras_rmac.layers.spoc_pooling import SPoCPooling
from keras_rmac.models import extraction
from keras_rmac.models.multiscale import scale_sizes
from keras_rmac.models.multiscale import sum_over_scales
from keras_rmac.models.multiscale import validate_scales
from keras_rmac.models.proposal_tail import proposal_parts
from keras_rmac.models.regions import region_pooling
from keras_rmac.models.regions import validate_regions
from keras_rmac.models.value_range import ValueRangeWarning
from keras_rmac.models.value_range import unit_range_message
from keras_rmac.models.value_range import unit_range_peak
from keras_rmac.models.value_range import validate_value_range
from keras_rmac.progress import progress_bar


@keras.saving.register_keras_serializable(package="keras_rmac")
class RMACModel(keras.Model):
    """R-MAC global image descriptor network.

    backbone CNN -> regions -> region max-pool -> L2 -> shift + PCA (a fully
    connected layer with bias) -> L2 -> sum over regions -> L2. Calling the
    model on a batch of RGB images (float, values in [0, 255], any size)
    returns L2-normalised descriptors `(B, D)`; the backbone's preprocessing
    is part of the graph. Until `adapt_pca()` is called, shift + PCA is the
    identity and the model computes plain R-MAC. The whole network is
    differentiable and trainable end to end (see `TripletModel`).

    Args:
        backbone: str or `keras.Model`. A name from
            `keras_rmac.backbones.BACKBONES` (`"mobilenet_v1"`,
            `"mobilenet_v2"`, `"efficientnet_lite0"`, `"resnet50"`,
            `"resnet101"`, `"vgg16"`, ...) or any convolutional model.
            Defaults to `"mobilenet_v2"`.
        weights: `"imagenet"` (Keras download), a path to a local weights
            file, or None (random init). Defaults to `"imagenet"`.
        levels: int. R-MAC grid levels. Defaults to `3`.
        overlap: float. R-MAC region overlap. Defaults to `0.4`.
        pooling: str. `"rmac"`, or a one-region baseline: `"mac"`,
            `"spoc"` or `"gem"`. Defaults to `"rmac"`.
        pca_dim: int or None. Output dimension of shift + PCA; None keeps
            the backbone's channel count. Defaults to `None`.
        whiten_power: float. Whitening power used by `adapt_pca()`.
            Defaults to `0.5`.
        preprocessing: str or None. Override of the preprocessing mode
            (`"tf"`, `"torch"`, `"caffe"`, `"lite"`, `"none"`); None picks
            the one the weights expect. Defaults to `None`.
        regions: str. Regions pooled by `pooling="rmac"`: `"grid"` (the
            rigid R-MAC grid) or `"rpn"` (the top proposals of a region
            proposal network, `LearnedRegionPooling`; train it with
            `keras_rmac.training.rpn.train_rpn`). Defaults to `"grid"`.
        rpn_options: dict or None. Arguments of `LearnedRegionPooling`
            (`top_n`, `sizes`, ...) for `regions="rpn"`. Defaults to `None`.
        proposal_from: str or None. For `regions="rpn"`: None, the RPN
            proposes on the backbone's output (training the backbone then
            moves the proposals); or a backbone layer name: the RPN reads
            a frozen copy (non-trainable, made at construction from the
            backbone's current weights, saved with the model) of the
            backbone from that layer to its output, fed by the backbone
            up to that layer. While the layers before it stay frozen, the
            proposals are then a fixed function of the image, whatever
            training does to the backbone from that layer on (what
            `keras_rmac.training.train(rpn_model=...)` sets up). Costs the
            copy's weights and one more pass through the tail per image
            (the whole backbone for its first layer). Defaults to `None`.

    Example:
    >>> model = RMACModel("mobilenet_v2", weights=None)  # doctest: +SKIP
    >>> model.extract(["a.jpg", "b.jpg"], max_size=512).shape  # doctest: +SKIP
    (2, 1280)

    Reference:
        - [Gordo et al., 2017](https://arxiv.org/abs/1610.07940)
    """

    def __init__(  # noqa: PLR0913 - documented public model constructor
        self,
        backbone="mobilenet_v2",
        weights="imagenet",
        levels=3,
        overlap=0.4,
        pooling="rmac",
        pca_dim=None,
        whiten_power=0.5,
        preprocessing=None,
        regions="grid",
        rpn_options=None,
        proposal_from=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.regions, self.rpn_options = validate_regions(
            regions, rpn_options, pooling
        )
        if pooling not in POOLINGS:
            raise ValueError(
                f"Unknown pooling={pooling!r}; choose one of {POOLINGS}."
            )
        self.backbone_name = backbone if isinstance(backbone, str) else None
        net, mode, _ = build_backbone(backbone, weights)
        self.backbone = net
        mode = preprocessing or mode
        if mode is None:
            raise ValueError(
                "A custom backbone model needs `preprocessing=` (one of "
                "'tf', 'torch', 'caffe', 'lite', 'none')."
            )
        self.preprocessing = mode
        self.levels = levels
        self.overlap = float(overlap)
        self.pooling = pooling
        self.pca_dim = pca_dim
        self.whiten_power = float(whiten_power)

        self.preprocess = Preprocess(mode, name="preprocess")
        if pooling == "rmac":
            self.pool = region_pooling(
                self.regions, levels, overlap, self.rpn_options
            )
        elif pooling == "mac":
            self.pool = MACPooling(name="mac_pooling")
        elif pooling == "spoc":
            self.pool = SPoCPooling(name="spoc_pooling")
        else:
            self.pool = GeMPooling(name="gem_pooling")
        # The RPN's own frozen copy of the backbone tail, if any.
        self.proposal_from = proposal_from
        self.proposal_tail, self._proposal_source = proposal_parts(
            net, proposal_from, self.regions
        )
        self.region_l2 = L2Normalize(name="region_l2")
        self.shift_pca = ShiftPCA(pca_dim, whiten_power, name="shift_pca")
        self.pca_l2 = L2Normalize(name="pca_l2")
        self.descriptor_l2 = L2Normalize(name="descriptor_l2")
        self._functions = {}
        self._value_range_warned = False
        # Create every weight now (ShiftPCA's are lazy), so the fingerprint
        # is stable and a model adapted but never called saves its PCA.
        self.build((None, None, None, 3))

    def build(self, input_shape=None):
        features = tuple(self.backbone.output.shape)
        for layer in (self.preprocess, self.pool):
            if not layer.built:
                layer.build(features)
        if not self.shift_pca.built:
            self.shift_pca.build(self.pool.compute_output_shape(features))
        self.built = True

    def region_vectors(self, images, training=False):
        """L2-normalised region vectors `(B, R, C)` before shift + PCA."""
        x = self.preprocess(images)
        return self.pool_regions(*self.backbone_maps(x, training))

    def call(self, images, training=False):
        x = self.preprocess(images)
        return self.head(*self.backbone_maps(x, training))

    def backbone_maps(self, x, training=False):
        """`(features, proposal maps or None)` of preprocessed images.

        The proposal maps are those of the frozen tail copy
        (`proposal_from`), None without one (the RPN reads `features`).
        """
        if self._proposal_source is None:
            return self.backbone(x, training=training), None
        return self._proposal_source(x, training=training)

    # The R-MAC head, in two halves so that `adapt_pca` can stop between
    # them. `FeatureEmbedding` (training on cached features) calls these
    # same methods, and the SavedModel export calls the model itself.

    def head(self, features, proposal_maps=None):
        """The R-MAC head on backbone features `(B, H, W, C)` -> `(B, D)`.

        `aggregate(pool_regions(features, proposal_maps))`: region max-pool
        -> L2 -> shift + PCA -> L2 -> sum -> L2 (one region for MAC, SPoC,
        GeM). `proposal_maps`: what the RPN proposes on, if not `features`.
        """
        return self.aggregate(self.pool_regions(features, proposal_maps))

    def pool_regions(self, features, proposal_maps=None):
        """Features `(B, H, W, C)` -> L2-normalised regions `(B, R, C)`."""
        # Max-pool every region of the grid or of the RPN's proposals
        # (MAC/SPoC/GeM: one region over the whole map), L2-normalise each.
        if proposal_maps is None:
            return self.region_l2(self.pool(features))
        pooled = self.pool(features, proposal_features=proposal_maps)
        return self.region_l2(pooled)

    def aggregate(self, regions):
        """L2-normalised regions `(B, R, C)` -> descriptors `(B, D)`."""
        # Shift + PCA (fully connected with bias) on every region.
        regions = self.shift_pca(regions)
        # L2-normalise again.
        regions = self.pca_l2(regions)
        # Sum over regions, then L2-normalise the sum.
        return self.descriptor_l2(ops.sum(regions, axis=1))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dimension)

    @property
    def dimension(self):
        """Dimension D of the descriptors."""
        return self.pca_dim or int(self.backbone.output.shape[-1])

    @property
    def descriptor_dim(self):
        """Deprecated alias of `dimension`."""
        warnings.warn(
            "RMACModel.descriptor_dim is deprecated; use RMACModel.dimension.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.dimension

    # ----------------------------------------------------------------------
    # Inference on images of any size.

    def extract(
        self,
        images,
        max_size=None,
        scales=(1.0,),
        batch_size=8,
        num_workers=4,
        verbose="auto",
        value_range=None,
        draft_above=image_io.DEFAULT_DRAFT_ABOVE,
        **options,
    ):
        """Computes L2-normalised descriptors of images.

        Each image is decoded once, then resized so that its longest side
        is `max_size * s` (up or down, keeping the aspect ratio) for every
        scale `s`; with several scales the L2-normalised descriptors are
        summed and L2-normalised again (the multi-resolution rule of
        `keras_rmac.models.multiscale`, which the SavedModel export
        follows too).

        Args:
            images: image paths (list of str / Path), a NumPy array `(N, H,
                W, 3)` or `(H, W, 3)`, a list of `(H, W, 3)` arrays of
                different sizes, or a `tf.data.Dataset` of `(H, W, 3)`
                images or `(B, H, W, 3)` batches. RGB values in [0, 255],
                or in `value_range`.
            max_size: int or None. Longest side at scale 1; None keeps each
                image's own size. Defaults to `None`.
            scales: sequence of float. Multi-resolution scales. Defaults to
                `(1.0,)`.
            batch_size: int. Images per forward pass (images of the same
                resized shape are batched together). Defaults to `8`.
            num_workers: int. Threads decoding image files. Defaults to `4`.
            verbose: `"auto"`, 0 or 1. Progress bar. Defaults to `"auto"`
                (shown for more than 100 images).
            value_range: None or `(low, high)`. Range of the pixel values
                of arrays and datasets, mapped linearly onto [0, 255]
                before preprocessing: `(0, 1)` for float images from
                `tf.image.convert_image_dtype`, `(0, 255)` for plain RGB.
                Image files are always decoded to 0..255 and not affected.
                None means `(0, 255)`, with a `ValueRangeWarning` (once per
                model) when float pixels look like [0, 1] (maximum in
                (0, 1]; for a dataset, its first element is checked).
                Defaults to `None`.
            draft_above: int or None. Image files only: a JPEG declaring
                more than this many pixels is decoded at reduced scale
                (1/2, 1/4 or 1/8, at least twice the largest resized size;
                see `keras_rmac.data.pixel_limits`) when `max_size` is
                set; None decodes every file whole. Defaults to
                `image_io.DEFAULT_DRAFT_ABOVE` (100 megapixels).
            **options: keyword-only run options (a catch-all only to keep
                the argument list short; anything else raises `TypeError`):
            precision: str. `"float32"`, or `"mixed_float16"` /
                `"mixed_bfloat16"` (the network runs under that Keras
                dtype policy; for GPUs and TPUs, slow on CPU; descriptors
                keep a cosine >= 0.999 with float32's). Defaults to
                `"float32"`.
            jit_compile: bool. Compile the network with XLA (once per
                resized image shape). Defaults to `False`.

        Returns:
            float32 NumPy array `(N, D)`.

        Raises:
            keras_rmac.data.image_io.ImageError: an image file cannot be
                read (the message names the file and the reason).
            ValueError: invalid `scales` or `value_range`, or an array
                that is not RGB.
        """
        scales = validate_scales(scales)
        options = extraction.check_run_options(options, "RMACModel.extract")
        runner = extraction.Runner(self, "descriptor", **options)
        # Files: large JPEGs decode at reduced scale, down to the largest
        # size they are resized to.
        draft_size = (
            None if max_size is None else max(scale_sizes(max_size, scales))
        )
        source, count, value_range = self._pixels(
            images,
            num_workers,
            value_range,
            "RMACModel.extract",
            draft_size=draft_size,
            draft_above=draft_above,
        )
        progress = _progress(count, verbose, "extract")
        size_fns = [_size_fn(max_size, s) for s in scales]
        rows = []
        done = 0
        # Each image is decoded once, then resized and run at every scale;
        # chunks are prepared (resized, batched by shape) ahead.
        for n, prepared in extraction.prepared_chunks(
            source, batch_size, size_fns, value_range
        ):
            per_scale = extraction.run_prepared(runner, prepared, n)
            rows.append(sum_over_scales(per_scale))
            done += n
            if progress is not None:
                progress.update(done)
        if not rows:
            return np.zeros((0, self.dimension), np.float32)
        if len(rows) == 1:
            return rows[0]
        return np.concatenate(rows).astype(np.float32, copy=False)

    def adapt_pca(
        self,
        images,
        max_size=None,
        power=None,
        batch_size=8,
        num_workers=4,
        verbose="auto",
        value_range=None,
    ):
        """Learns shift + PCA-whitening from the region vectors of images.

        Region vectors (after region max-pooling and L2) of every image are
        collected and `ShiftPCA.adapt` sets the layer to shift +
        PCA-whitening. Use images disjoint from the ones you evaluate on.

        Args:
            images: as in `extract` (JPEG files above
                `image_io.DEFAULT_DRAFT_ABOVE` pixels decoded reduced, as
                `extract` does by default).
            max_size: int or None. Longest side. Defaults to `None`.
            power: float or None. Whitening power; None uses the model's
                `whiten_power`. Defaults to `None`.
            batch_size: int. Defaults to `8`.
            num_workers: int. Defaults to `4`.
            verbose: `"auto"`, 0 or 1. Defaults to `"auto"`.
            value_range: None or `(low, high)`. As in `extract`. Defaults
                to `None`.

        Returns:
            The number of region vectors used.
        """
        source, count, value_range = self._pixels(
            images,
            num_workers,
            value_range,
            "RMACModel.adapt_pca",
            draft_size=max_size,
        )
        progress = _progress(count, verbose, "adapt_pca")
        runner = extraction.Runner(self, "regions")
        used = [0]

        def blocks():
            done = 0
            for n, prepared in extraction.prepared_chunks(
                source, batch_size, [_size_fn(max_size, 1.0)], value_range
            ):
                vectors = extraction.run_prepared(
                    runner, prepared, n, stack=False
                )[0]
                block = np.concatenate(vectors)
                used[0] += len(block)
                done += n
                if progress is not None:
                    progress.update(done)
                yield block

        self.shift_pca.adapt(
            blocks(), power=self.whiten_power if power is None else power
        )
        self._functions.clear()
        return used[0]

    def _pixels(self, images, num_workers, value_range, where, **decode):
        """`(source of RGB images, count, value range to map to 0..255)`.

        The source is a `(N, H, W, 3)` array, a list of `(H, W, 3)`
        arrays or an iterator over them. Arrays and datasets in a
        `value_range` are rescaled as they are batched; without one, float
        pixels that look like [0, 1] warn once per model (the check of
        `keras_rmac.models.value_range`) and pass unchanged.
        """
        value_range = validate_value_range(value_range)
        source, count, sample = _image_source(images, num_workers, **decode)
        if sample is None:  # Decoded image files: always 0..255.
            return source, count, None
        if value_range is not None:
            return source, count, value_range
        if not self._value_range_warned:
            peak = unit_range_peak(sample)
            if peak is not None:
                self._value_range_warned = True
                # Points at the caller of extract / adapt_pca.
                warnings.warn(
                    unit_range_message(peak, where),
                    ValueRangeWarning,
                    stacklevel=3,
                )
        return source, count, None

    def fingerprint(self):
        """sha256 of the weights and of what else decides the output (hex).

        Covers the preprocessing, the head (pooling, levels, overlap) and,
        per backbone layer, the arguments that change its arithmetic
        (padding, strides, BN epsilon, ...), so two models give the same
        descriptors only if their fingerprints match; search indexes store
        it to refuse mixing descriptors.
        """
        digest = hashlib.sha256()
        digest.update(self.preprocessing.encode())
        head = [self.pooling, self.levels, self.overlap]
        if self.regions != "grid":  # Grid fingerprints stay as they were.
            head += [self.regions, self.rpn_options]
        if self.proposal_from is not None:
            head.append(self.proposal_from)
        digest.update(json.dumps(head).encode())
        digest.update(graph_signature(self.backbone).encode())
        update_with_weights(digest, self.weights)
        return digest.hexdigest()

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "backbone": keras.saving.serialize_keras_object(self.backbone),
                "weights": None,
                "levels": self.levels,
                "overlap": self.overlap,
                "pooling": self.pooling,
                "pca_dim": self.pca_dim,
                "whiten_power": self.whiten_power,
                "preprocessing": self.preprocessing,
                "backbone_name": self.backbone_name,
                "regions": self.regions,
                "rpn_options": self.rpn_options,
                "proposal_from": self.proposal_from,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        name = config.pop("backbone_name", None)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        model = cls(**config)
        model.backbone_name = name
        return model


def _size_fn(max_size, scale):
    def size(image):
        return scale_sizes(max_size, (scale,), max(image.shape[:2]))[0]

    return size


def _progress(count, verbose, label):
    """A progress reporter over `count` images, or None."""
    if verbose == "auto":
        verbose = 1 if count and count > 100 else 0
    return progress_bar(count, verbose, unit_name="image", label=label)


def _image_source(images, num_workers, **decode):
    """`(source, count or None, sample)`.

    The source is the `(N, H, W, 3)` array itself for an array, the list
    for a list of arrays, else an iterator over `(H, W, 3)` arrays.

    Files are decoded by `image_io.load_images` with options `decode`.
    `sample` is what the value-range check looks at: a list of the arrays
    given (for a dataset, its first element: an image or a batch), or
    None for image files.
    """
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if isinstance(images, tf.data.Dataset):
        items = _dataset_items(images)
        first = next(items, None)
        if first is None:
            return iter(()), 0, []

        def from_dataset():
            for item in itertools.chain([first], items):
                if item.ndim == 4:
                    yield from item
                else:
                    yield item

        card = int(images.cardinality())
        return from_dataset(), (card if card >= 0 else None), [first]
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                "Image arrays must be (N, H, W, 3) or (H, W, 3) RGB, got "
                f"shape {images.shape}."
            )
        return images, len(images), [images]
    images = list(images)
    if images and isinstance(images[0], (str, os.PathLike)):

        def from_files():
            for _, item in image_io.load_images(
                images, num_workers=num_workers, **decode
            ):
                if isinstance(item, image_io.ImageError):
                    raise item
                yield item

        return from_files(), len(images), None
    for i, image in enumerate(images):
        shape = np.shape(image)
        if len(shape) != 3 or shape[-1] != 3:
            raise ValueError(
                f"Image {i} must be (H, W, 3) RGB, got shape {shape}."
            )
    return images, len(images), images


def _dataset_items(dataset):
    """The images (or batches) of a dataset, without labels, as arrays."""
    for item in dataset.as_numpy_iterator():
        yield item[0] if isinstance(item, tuple) else item
