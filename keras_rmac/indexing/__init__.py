"""Incremental, resumable indexing of a photo folder, and searching it.

This is the library behind `keras-rmac index` and `keras-rmac search`:
`index_folder` turns a folder of photos into a searchable index directory,
`PhotoIndex` opens one and answers image queries.

Modules, one job each:

- `settings`: `IndexSettings`, the one dataclass a run is driven by, and
  the defaults (`DEFAULT_MAX_SIZE`); light, no framework at import time;
- `layout`: the files of an index directory and its version marker
  (`current_generation`, a cheap read a service can poll);
- `store`: `DescriptorStore`, the committed shards of descriptors;
- `plan`, `extract`, `build`, `run`: the steps of `index_folder`;
- `photo_index`: `PhotoIndex` and `SearchResult`;
- `report`: `IndexReport`.

`index_folder`, `PhotoIndex`, `SearchResult`, `DescriptorStore` and
`load_rmac_model` are imported on first use, so that the light names
(settings, layout, errors) can be read without loading TensorFlow.

Example:

>>> from keras_rmac.models import RMACModel  # doctest: +SKIP
>>> index_folder("photos", "photos_index",
...              model=RMACModel("mobilenet_v2"))  # doctest: +SKIP
>>> PhotoIndex("photos_index").search("query.jpg", k=5)  # doctest: +SKIP
"""

from keras_rmac._lazy import lazy_attributes
from keras_rmac.indexing.errors import IndexBusyError
from keras_rmac.indexing.errors import IndexMismatchError
from keras_rmac.indexing.layout import MODEL_FILE
from keras_rmac.indexing.layout import REPORT_FILE
from keras_rmac.indexing.layout import SETTINGS_FILE
from keras_rmac.indexing.layout import Version
from keras_rmac.indexing.layout import current_generation
from keras_rmac.indexing.layout import current_version
from keras_rmac.indexing.layout import recorded_settings
from keras_rmac.indexing.layout import saved_model_path
from keras_rmac.indexing.report import IndexReport
from keras_rmac.indexing.settings import BYTES_PER_VECTOR
from keras_rmac.indexing.settings import DEFAULT_MAX_SIZE
from keras_rmac.indexing.settings import IndexSettings
from keras_rmac.indexing.settings import recorded_draft_above

_LAZY = {
    "DescriptorStore": "keras_rmac.indexing.store",
    "PhotoIndex": "keras_rmac.indexing.photo_index",
    "SearchResult": "keras_rmac.indexing.photo_index",
    "index_folder": "keras_rmac.indexing.run",
    "load_rmac_model": "keras_rmac.models.loading",
}

__all__ = [
    "BYTES_PER_VECTOR",
    "DEFAULT_MAX_SIZE",
    "MODEL_FILE",
    "REPORT_FILE",
    "SETTINGS_FILE",
    "DescriptorStore",
    "IndexBusyError",
    "IndexMismatchError",
    "IndexReport",
    "IndexSettings",
    "PhotoIndex",
    "SearchResult",
    "Version",
    "current_generation",
    "current_version",
    "index_folder",
    "load_rmac_model",
    "recorded_draft_above",
    "recorded_settings",
    "saved_model_path",
]


__getattr__, __dir__ = lazy_attributes(globals(), _LAZY)
