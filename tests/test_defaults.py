"""`keras_rmac.defaults` names what the Keras modules really build."""

from keras_rmac import defaults
from keras_rmac.backbones import BACKBONES
from keras_rmac.models import rmac_model


def test_backbone_names_are_the_registry_keys():
    # Adding a backbone to `BACKBONES` means adding its name here too,
    # or `--backbone` would refuse it.
    assert defaults.BACKBONE_NAMES == tuple(BACKBONES)


def test_poolings_are_the_models():
    assert rmac_model.POOLINGS == defaults.POOLINGS
