"""make_index and Index.get_config / from_config: one way to make an index."""

import json
import math

import numpy as np
import pytest

from keras_rmac.search import KINDS
from keras_rmac.search import ExactIndex
from keras_rmac.search import Index
from keras_rmac.search import ScannIndex
from keras_rmac.search import load_index
from keras_rmac.search import make_index
from tests.search.helpers import unit_rows

METADATA = {"weights_fingerprint": "abc", "model_config": {"scales": [1, 2]}}

CASES = [
    ("exact", {}),
    ("exact", {"block_bytes": 4096}),
    ("fast", {}),
    (
        "fast",
        {
            "num_leaves": 40,
            "num_leaves_to_search": 4,
            "reorder_num_neighbors": 50,
            "reorder_dtype": "int8",
            "training_sample_size": 900,
            "num_threads": 1,
        },
    ),
    ("compact", {}),
    ("compact", {"bytes_per_vector": 16, "hash_type": "lut16"}),
    (
        "compact",
        {
            "dimensions_per_block": 4,
            "projection_dim": 0,
            "spherical_tree": False,
            "anisotropic_quantization_threshold": float("nan"),
        },
    ),
]


def _same(a, b):
    """Config equality with NaN equal to itself."""
    a, b = json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)
    return a == b


@pytest.mark.parametrize("kind, options", CASES)
def test_config_round_trip(kind, options):
    index = make_index(kind, 32, metadata=METADATA, **options)
    assert index.kind == kind and kind in KINDS
    config = index.get_config()
    # JSON as is (no NaN, no numpy types) and complete.
    text = json.dumps(config, allow_nan=False)
    assert json.loads(text) == config
    assert config["dimension"] == 32 and config["metadata"] == METADATA
    for key, value in options.items():
        if isinstance(value, float) and math.isnan(value):
            assert config[key] == "nan"
        else:
            assert config[key] == value, key
    for again in (
        type(index).from_config(json.loads(text)),
        make_index(index.kind, **json.loads(text)),
    ):
        assert type(again) is type(index) and len(again) == 0
        assert _same(again.get_config(), config)
    # The config is a copy: changing it leaves the index alone.
    config["metadata"]["model_config"]["scales"].append(3)
    assert index.metadata == METADATA


@pytest.mark.parametrize("kind, options", CASES)
def test_saved_manifest_records_the_config(kind, options, tmp_path):
    index = make_index(kind, 32, **options)
    index.add(unit_rows(np.random.default_rng(0), 300, 32))
    index.save(tmp_path / "i")
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    params = dict(manifest["params"])
    params.pop("built", None)
    # The measured operating point is a result of the build, not a knob.
    point = params.pop("operating_point", None)
    assert (point is not None) == (kind != "exact")
    config = index.get_config()
    assert params == {
        k: v for k, v in config.items() if k not in ("dimension", "metadata")
    }
    loaded = load_index(tmp_path / "i")
    assert _same(loaded.get_config(), config)


def test_equivalent_index_gives_the_same_results():
    rng = np.random.default_rng(1)
    db, q = unit_rows(rng, 500, 16), unit_rows(rng, 5, 16)
    index = ScannIndex(16, "compact", bytes_per_vector=8)
    index.add(db)
    twin = make_index(index.kind, **index.get_config())
    twin.add(db)
    for a, b in zip(index.search(q, 5), twin.search(q, 5)):
        np.testing.assert_array_equal(a, b)


def test_make_index_kinds_and_errors():
    assert isinstance(make_index("exact", 4), ExactIndex)
    assert make_index("fast", 4).mode == "fast"
    assert make_index("compact", 4).bytes_per_vector == 64
    assert make_index("fast", 4, mode="fast").mode == "fast"
    made = make_index(lambda d, **kw: ExactIndex(d, **kw), 3, block_bytes=64)
    assert isinstance(made, ExactIndex) and made.block_bytes == 64
    with pytest.raises(ValueError, match="contradicts"):
        make_index("fast", 4, mode="compact")
    with pytest.raises(ValueError, match="kind"):
        make_index("scann", 4)
    with pytest.raises(TypeError, match="index class"):
        Index.from_config({"dimension": 4})
