"""Data: image files, labelled lists, training triplets, benchmarks, cleaning.

Modules, in the order the data flows:

- `image_io`: decode image files (bad-file policy), `IMAGE_EXTENSIONS`,
  `list_images`; `colour`: the colour policy; `resize`: longest side to
  `max_size` (TensorFlow).
- `labelled`: `LabelledImages`, the `path,label[,x0,y0,x1,y1]` CSV format
  (`read_image_list`, `write_image_list`) and one folder per class.
- `bad_files`, `triplet_table`, `augmentation`, `triplets`: the `tf.data`
  pipeline of training triplets; `negatives` (the steps on descriptors) and
  `mining` (the callback): hard negatives;
  `class_batches`: class-balanced (P x K) batches for listwise losses.
- `datasets`: retrieval benchmarks (Oxford/Paris, Holidays, COIL-100...).
- `cleaning`, `local_features`: automatic cleaning of noisy lists.

The names below are importable from `keras_rmac.data` itself. They are
loaded on first use, so that `import keras_rmac.data.cleaning` (or the
command line) does not import TensorFlow through this package.

Example:

>>> from keras_rmac.data import STREAMS, LabelledImages
>>> STREAMS
('query', 'positive', 'negative')
"""

from keras_rmac._lazy import lazy_attributes

_EXPORTS = {
    "Augmentation": "augmentation",
    "BadFiles": "bad_files",
    "ClassBatches": "class_batches",
    "class_batch_dataset": "class_batches",
    "feature_class_batch_dataset": "class_batches",
    "validate_images": "bad_files",
    "IMAGE_EXTENSIONS": "image_io",
    "ImageError": "image_io",
    "list_images": "image_io",
    "load_image": "image_io",
    "load_images": "image_io",
    "LabelledImages": "labelled",
    "class_folders": "labelled",
    "folder_per_class": "labelled",
    "read_image_list": "labelled",
    "write_image_list": "labelled",
    "resize_longest_side": "resize",
    "target_size": "resize",
    "STREAMS": "triplet_table",
    "TripletTable": "triplet_table",
    "check_trainable": "triplet_table",
    "random_triplets": "triplet_table",
    "feature_triplet_dataset": "triplets",
    "image_dataset": "triplets",
    "triplet_dataset": "triplets",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_attributes(
    globals(),
    {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()},
)
