"""`keras_rmac.defaults` names what the Keras modules really build."""

import keras
import numpy as np

from keras_rmac import defaults
from keras_rmac.backbones import BACKBONES
from keras_rmac.models import RMACModel


def test_backbone_names_are_the_registry_keys():
    # Adding a backbone to `BACKBONES` means adding its name here too,
    # or `--backbone` would refuse it.
    assert defaults.BACKBONE_NAMES == tuple(BACKBONES)


def test_every_pooling_name_builds_its_own_head():
    inputs = keras.Input((None, None, 3))
    tiny = keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=8)(inputs))
    heads = set()
    for name in defaults.POOLINGS:
        model = RMACModel(tiny, preprocessing="none", pooling=name)
        out = model(np.ones((1, 64, 64, 3), "float32"))
        assert out.shape == (1, 4), name
        heads.add(type(model.pool).__name__)
    assert len(heads) == len(defaults.POOLINGS)
