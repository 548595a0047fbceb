"""Instance-retrieval benchmarks as plain Python / NumPy structures.

Every loader returns a `RetrievalDataset`: image paths for the database and
the queries, optional query boxes, and one ground-truth mapping per query
(database indices under ``"ok"`` and ``"junk"``, or ``"easy"``, ``"hard"``
and ``"junk"`` for revisited Oxford/Paris) ready for
`keras_rmac.evaluation.compute_map` / `evaluate_revisited`. Nothing here
decodes images.

Supported layouts, one module per family: `oxford_paris` (revisited
Oxford/Paris from revisitop ``gnd_*.pkl``; the original Oxford 5k / Paris
6k from ``*_good.txt`` ... text files or the cnnimageretrieval
``gnd_oxford5k.pkl``) and `instances` (INRIA Holidays, COIL-100 with the
project's fixed split, and a generic one-folder-per-instance layout, whose
images are those of `keras_rmac.data.image_io.IMAGE_EXTENSIONS`).
"""

from keras_rmac.data.datasets.base import RetrievalDataset
from keras_rmac.data.datasets.base import crop_box
from keras_rmac.data.datasets.instances import COIL_TEST_OBJECTS
from keras_rmac.data.datasets.instances import COIL_TEST_STEP_DEGREES
from keras_rmac.data.datasets.instances import COIL_TRAIN_OBJECTS
from keras_rmac.data.datasets.instances import load_coil100
from keras_rmac.data.datasets.instances import load_folder_per_instance
from keras_rmac.data.datasets.instances import load_holidays
from keras_rmac.data.datasets.oxford_paris import REVISITED_NAMES
from keras_rmac.data.datasets.oxford_paris import load_oxford5k
from keras_rmac.data.datasets.oxford_paris import load_paris6k
from keras_rmac.data.datasets.oxford_paris import load_revisited
from keras_rmac.data.image_io import IMAGE_EXTENSIONS

__all__ = [
    "COIL_TEST_OBJECTS",
    "COIL_TEST_STEP_DEGREES",
    "COIL_TRAIN_OBJECTS",
    "IMAGE_EXTENSIONS",
    "REVISITED_NAMES",
    "RetrievalDataset",
    "crop_box",
    "load_coil100",
    "load_folder_per_instance",
    "load_holidays",
    "load_oxford5k",
    "load_paris6k",
    "load_revisited",
]
