"""Retrieval evaluation: revisitop-compatible AP, mAP, mP@k and protocols."""

from keras_rmac.evaluation.average_precision import compute_ap
from keras_rmac.evaluation.average_precision import compute_map
from keras_rmac.evaluation.proposals import proposal_recall
from keras_rmac.evaluation.protocols import PROTOCOLS
from keras_rmac.evaluation.protocols import evaluate_revisited
from keras_rmac.evaluation.protocols import revisited_gnd

__all__ = [
    "PROTOCOLS",
    "compute_ap",
    "compute_map",
    "evaluate_revisited",
    "proposal_recall",
    "revisited_gnd",
]
