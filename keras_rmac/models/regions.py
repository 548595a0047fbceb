"""Where `RMACModel` pools: the R-MAC grid or learned region proposals.

`region_pooling` builds the pooling layer for `RMACModel(regions=...)`:
`"grid"` is R-MAC's rigid multi-scale grid (`RMACPooling`, the default),
`"rpn"` the top proposals of a region proposal network
(`LearnedRegionPooling`, the second improvement of Gordo et al.), both
followed by the same L2 -> shift + PCA -> L2 -> sum -> L2 head.

`region_boxes` returns the boxes either kind pools for an image, in the
image's pixels, so that proposals can be compared with true boxes (see
`keras_rmac.evaluation.proposal_recall`).
"""

import numpy as np
import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.layers import box_ops
from keras_rmac.layers.learned_regions import LearnedRegionPooling
from keras_rmac.layers.rmac_pooling import RMACPooling

REGIONS = ("grid", "rpn")


def validate_regions(regions, rpn_options, pooling):
    """`(regions, rpn_options as a dict)`, or ValueError."""
    if regions not in REGIONS:
        raise ValueError(
            f"Unknown regions={regions!r}; choose one of {REGIONS}."
        )
    if regions == "rpn" and pooling != "rmac":
        raise ValueError(
            f"regions='rpn' pools learned regions with pooling='rmac'; got "
            f"pooling={pooling!r}."
        )
    if rpn_options is not None and not isinstance(rpn_options, dict):
        raise ValueError(
            "`rpn_options` must be a dict of LearnedRegionPooling arguments "
            f"(e.g. {{'top_n': 16}}), got {rpn_options!r}."
        )
    if rpn_options and regions != "rpn":
        raise ValueError(
            f"`rpn_options` apply to regions='rpn' only; got regions="
            f"{regions!r} with rpn_options={rpn_options!r}."
        )
    return regions, dict(rpn_options or {})


def region_pooling(regions, levels, overlap, rpn_options):
    """The region pooling layer of `RMACModel(pooling="rmac")`."""
    if regions == "rpn":
        return LearnedRegionPooling(**rpn_options, name="rpn_pooling")
    return RMACPooling(levels, overlap, name="rmac_pooling")


def region_boxes(model, image, top_n=None, max_size=None):
    """Boxes that `model` pools for one image, best first, in its pixels.

    Args:
        model: `RMACModel` with `pooling="rmac"`.
        image: array `(H, W, 3)`, RGB in [0, 255].
        top_n: int or None. Keep the first `top_n` boxes. Defaults to None.
        max_size: int or None. The model sees the image resized to this
            longest side (as `extract(max_size=...)` does); the boxes are
            still in `image`'s pixels. None: as given. Defaults to None.

    Returns:
        float32 array `(N, 4)` of `(x0, y0, x1, y1)` pixels: the learned
        proposals (`regions="rpn"`, before rounding to cells, in the RPN's
        order, on the frozen tail copy with `proposal_from`), or the
        grid's regions (in grid order).
    """
    if model.pooling != "rmac":
        raise ValueError(
            f"region_boxes needs pooling='rmac', got {model.pooling!r}."
        )
    image = np.asarray(image, np.float32)
    seen = image
    if max_size is not None:
        seen = image_io.resize_longest_side(image, int(max_size)).numpy()
    features, maps = model.backbone_maps(
        model.preprocess(tf.constant(seen[None]))
    )
    height, width = int(features.shape[1]), int(features.shape[2])
    if model.regions == "rpn":
        source = features if maps is None else maps
        boxes = model.pool.proposals(source)[0][0].numpy()
    else:
        boxes = box_ops.grid_boxes(model.pool.regions(features)).numpy()
    scale = np.array(
        [image.shape[1] / width, image.shape[0] / height] * 2, np.float32
    )
    return (boxes * scale)[:top_n]
