"""Export of descriptor models for serving (TensorFlow Serving)."""

from keras_rmac.export.saved_model import BYTES_INPUT
from keras_rmac.export.saved_model import IMAGES_INPUT
from keras_rmac.export.saved_model import IMAGES_SIGNATURE
from keras_rmac.export.saved_model import OUTPUT
from keras_rmac.export.saved_model import SERVING_SIGNATURE
from keras_rmac.export.saved_model import decode_image_bytes
from keras_rmac.export.saved_model import existing_versions
from keras_rmac.export.saved_model import export_saved_model

__all__ = [
    "BYTES_INPUT",
    "IMAGES_INPUT",
    "IMAGES_SIGNATURE",
    "OUTPUT",
    "SERVING_SIGNATURE",
    "decode_image_bytes",
    "existing_versions",
    "export_saved_model",
]
