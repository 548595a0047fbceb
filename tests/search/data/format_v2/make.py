"""Writes the format_version 2 fixtures of tests/search/test_scann_tuning.py.

Run once with a keras_rmac checkout that writes format_version 2 (these
were written at commit d0d36d2, keras_rmac 0.2.0):
    PYTHONPATH=<that checkout> python make.py tests/search/data/format_v2
"""

import json
import os
import sys

import numpy as np

from keras_rmac.search import ScannIndex
from keras_rmac.search import storage

out = sys.argv[1]
rng = np.random.default_rng(7)


def unit(n, d):
    x = rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


q = unit(5, 8)
fast = ScannIndex(8, "fast", num_leaves_to_search=3, num_leaves=10)
db = unit(2000, 8)
fast.add(db, ids=np.arange(2000) + 100)
fast.save(os.path.join(out, "fast_v2"))
compact = ScannIndex(8, "compact", bytes_per_vector=4, num_leaves=8)
compact.add(unit(300, 8))
compact.save(os.path.join(out, "compact_v2"))
np.save(os.path.join(out, "queries.npy"), q)
res = {}
for name, idx in (("fast_v2", fast), ("compact_v2", compact)):
    ids, scores = idx.search(q, 5)
    res[name] = {"ids": ids.tolist(), "scores": scores.tolist()}
json.dump(
    {
        "about": "written by make.py at format_version %d"
        % storage.INDEX_FORMAT_VERSION,
        "results": res,
    },
    open(os.path.join(out, "expected.json"), "w"),
    indent=0,
)
