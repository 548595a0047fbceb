"""Model names and defaults that can be read without importing Keras.

`keras-rmac <command> --help` lists the backbone and pooling choices and
the region proposal network's defaults, and must not import TensorFlow to
do so; the modules that use these values (`backbones`,
`models.rmac_model`, `layers.anchors`, `layers.learned_regions`,
`training.config`) read them from here. Standard library only.

Example:

>>> from keras_rmac.defaults import POOLINGS
>>> POOLINGS
('rmac', 'mac', 'spoc', 'gem')
"""

BACKBONE_NAMES = (
    "mobilenet_v1",
    "mobilenet_v2",
    "efficientnet_lite0",
    "efficientnet_b0",
    "resnet50",
    "resnet101",
    "resnet152",
    "vgg16",
    "vgg19",
)
"""The names of `keras_rmac.backbones.BACKBONES`, in its order (a test
keeps the two equal)."""

POOLINGS = ("rmac", "mac", "spoc", "gem")
"""Global poolings of `RMACModel(pooling=...)`."""

DEFAULT_SIZES = (1.0, 2.0, 4.0, 8.0)
"""Anchor sides in feature cells: 32 to 256 pixels at stride 32."""

DEFAULT_RATIOS = (0.5, 1.0, 2.0)
"""Anchor height / width ratios (Faster R-CNN's)."""

NEGATIVE_MODES = ("hardest", "semihard")
"""Negatives of hard-negative mining (`keras_rmac.data.mining`):
`"hardest"`, the most similar images of other classes (Gordo et al.), or
`"semihard"`, the most similar of those less similar to the query than
its positive (Schroff et al., 2015), which keeps out of the table the
triplets whose loss all-equal descriptors would lower."""

DEFAULT_TOP_N = 256
"""Proposals pooled per image: the 256 of Gordo et al. (ECCV 2016)."""
