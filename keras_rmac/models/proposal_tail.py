"""Fixed learned regions: the RPN reads a frozen copy of the backbone tail.

`RMACModel(regions="rpn")` pools the proposals of an RPN head that reads a
feature map. By default that map is the backbone's output, so fine-tuning
the backbone moves the proposals even though the head is frozen (the
head's input drifts). With `RMACModel(proposal_from=<layer name>)` the RPN
reads a frozen copy of the backbone from that layer to its output instead,
fed by the shared backbone prefix:

    images -> preprocess -> backbone up to the cut -+-> backbone tail
                                                    |      -> features
                                                    +-> frozen tail copy
                                                           -> RPN -> boxes

The features pooled come from the (trainable) backbone; the boxes from the
copy, whose weights are the ones the RPN was trained on. As long as the
prefix is frozen (it is, when training starts at the cut), the proposals
are a fixed function of the image, as Gordo et al. intend (RPN trained
first, then the descriptor trained with the proposals fixed). The cost is
the copy: its weights (the tail's size) and one more pass through the tail
per image (the whole backbone when the cut is at its first layer).

`proposal_cut` turns a `trainable_from` setting into the cut, and
`ProposalSource` computes `(features, proposal maps)` in one pass over a
functional network (the backbone, or the tail `FeatureEmbedding` trains).
"""

import keras
from keras import ops

from keras_rmac.models.triplet_model import first_trainable_index
from keras_rmac.models.triplet_model import split_backbone


def proposal_cut(backbone, trainable_from):
    """The layer where the RPN's frozen copy starts, for `trainable_from`.

    Args:
        backbone: functional `keras.Model`.
        trainable_from: str, float or None. The first backbone layer
            trained (as `set_trainable` reads it: a name, a fraction of
            the layers, or None for all).

    Returns:
        str or None: the name of the first trained layer, or of the
        nearest layer before it where the backbone can be cut (a skip
        connection must not cross the cut); the backbone's first layer
        when everything trains; None when no layer trains (the proposals
        are fixed already).
    """
    layers = list(backbone.layers)
    first = first_trainable_index(layers, trainable_from)
    if first >= len(layers):
        return None
    # Layer 0 of a functional model is its input: the copy starts after.
    start = 1 if isinstance(layers[0], keras.layers.InputLayer) else 0
    for index in range(max(first, start), start - 1, -1):
        try:
            split_backbone(backbone, layers[index].name)
        except ValueError:
            continue
        return layers[index].name
    raise ValueError(
        f"Cannot cut backbone {backbone.name!r} at or before "
        f"{layers[first].name!r} for the RPN's frozen copy."
    )


def frozen_tail(backbone, layer_name):
    """A frozen copy of `backbone` from `layer_name` to its output.

    New layers (same names and arguments) with the backbone's current
    weights, every layer `trainable=False`.

    Raises:
        ValueError: unknown layer, or a cut crossed by a skip connection.
    """
    _, tail = split_backbone(backbone, layer_name)
    copy = keras.models.clone_model(tail)
    copy.set_weights(tail.get_weights())
    copy.trainable = False
    return copy


class ProposalSource:
    """`x -> (features, proposal maps)` of a functional backbone.

    One pass over the backbone (from its input, or from layer `start`'s
    input: the cached-features tail) gives its output and the input of
    layer `layer_name` (the cut); `frozen` (the copy of the layers from
    the cut on) turns the cut into the maps the RPN reads, in inference
    mode and in the copy's compute dtype (that of the backbone's layers
    under the model's dtype policy; the RPN proposes in float32). A
    plain object, not a Keras layer: the backbone's layers belong to the
    model that holds it, which saves them.

    Args:
        backbone: functional `keras.Model`.
        layer_name: str. The cut, a layer of `backbone`.
        frozen: `keras.Model`. The frozen copy from the cut on.
        start: str or None. The layer whose input `x` is; None: the
            backbone's input. Defaults to `None`.
    """

    def __init__(self, backbone, layer_name, frozen, start=None):
        inputs = backbone.input
        if start is not None:
            inputs = backbone.get_layer(start).input
        try:
            cut = backbone.get_layer(layer_name).input
            self.cut_is_input = cut is inputs
            outputs = backbone.output
            if not self.cut_is_input:
                outputs = [outputs, cut]
            self.model = keras.Model(inputs, outputs)
        except ValueError:
            raise ValueError(
                f"The RPN's frozen copy starts at {layer_name!r}, which is "
                f"not a layer of {backbone.name!r} after {start!r}: cache "
                "features at or before the layer the proposals are read "
                "from (`proposal_from`)."
            ) from None
        self.frozen = frozen

    def __call__(self, x, training=False):
        if self.cut_is_input:
            features, cut = self.model(x, training=training), x
        else:
            features, cut = self.model(x, training=training)
        # The copy computes under its own dtype policy, the backbone's
        # (float16 under mixed_float16); the RPN casts its maps to float32.
        maps = self.frozen(cut, training=False)
        return features, ops.stop_gradient(maps)


def proposal_parts(backbone, proposal_from, regions):
    """`(frozen copy, ProposalSource)` of `RMACModel(proposal_from=...)`,
    or `(None, None)` when `proposal_from` is None."""
    if proposal_from is None:
        return None, None
    if regions != "rpn":
        raise ValueError(
            "`proposal_from` sets the map the learned regions are proposed "
            f"on: it needs regions='rpn', got regions={regions!r} with "
            f"proposal_from={proposal_from!r}."
        )
    if not isinstance(proposal_from, str):
        raise ValueError(
            "`proposal_from` must be a backbone layer name (the first layer "
            f"of the RPN's frozen copy) or None, got {proposal_from!r}."
        )
    frozen = frozen_tail(backbone, proposal_from)
    return frozen, ProposalSource(backbone, proposal_from, frozen)
