"""Export of descriptor models for serving (TensorFlow Serving)."""

from keras_rmac.export.decode import decode_image_bytes
from keras_rmac.export.saved_model import METADATA_FILE
from keras_rmac.export.saved_model import existing_versions
from keras_rmac.export.saved_model import export_saved_model
from keras_rmac.export.serving import BYTES_INPUT
from keras_rmac.export.serving import IMAGES_INPUT
from keras_rmac.export.serving import IMAGES_SIGNATURE
from keras_rmac.export.serving import OUTPUT
from keras_rmac.export.serving import SERVING_SIGNATURE
from keras_rmac.export.warmup import WARMUP_FILE

__all__ = [
    "BYTES_INPUT",
    "IMAGES_INPUT",
    "IMAGES_SIGNATURE",
    "METADATA_FILE",
    "OUTPUT",
    "SERVING_SIGNATURE",
    "WARMUP_FILE",
    "decode_image_bytes",
    "existing_versions",
    "export_saved_model",
]
