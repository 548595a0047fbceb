"""keras_rmac.indexing.PhotoIndex: query expansion is search.expansion's."""

import numpy as np
import pytest

from keras_rmac import indexing
from keras_rmac.search import expansion
from tests.cli import photos


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    for i in range(20):
        photos.save(root / f"p{i:02d}.png", photos.photo(i))
    return root


@pytest.fixture(scope="module", params=["exact", "compact"])
def index(request, folder, tmp_path_factory):
    """An exact index (floats in the index) and a compact one (floats in
    the descriptor store only)."""
    index_dir = tmp_path_factory.mktemp(request.param)
    indexing.index_folder(
        folder,
        index_dir,
        model=photos.tiny_model(seed=0),
        max_size=64,
        mode=request.param,
        verbose=0,
    )
    return indexing.PhotoIndex(index_dir)


@pytest.mark.parametrize("qe, alpha", [(1, None), (3, None), (3, 2.0)])
def test_query_expansion_is_search_expansion(index, folder, qe, alpha):
    # A photo that is not indexed (itself as its first match would leave
    # the query as it is with qe=1).
    query = photos.save(folder.parent / "query.png", photos.photo(500))
    k = 6
    hits = index.search(query, k=k, qe=qe, alpha=alpha)

    database = index.stored_descriptors(np.arange(len(index)))
    vector = index.extract(query)[None]
    ids, scores = expansion.search_with_query_expansion(
        index.index, vector, k, qe_k=qe, alpha=alpha, database=database
    )
    assert [h.path for h in hits] == [index.path(int(i)) for i in ids[0]]
    np.testing.assert_allclose([h.score for h in hits], scores[0], rtol=0)
    # Guard: the expansion changes the scores of this query.
    plain = index.search(query, k=k)
    assert not np.allclose([h.score for h in plain], scores[0], atol=1e-4)


def test_describe_is_a_deprecated_alias_of_extract(index, folder):
    query = folder / "p03.png"
    with pytest.warns(DeprecationWarning, match="extract"):
        old = index.describe(query)
    np.testing.assert_array_equal(old, index.extract(query))
    assert index.dimension == old.shape[0] == 16
