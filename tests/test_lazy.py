import json

import pytest

from keras_rmac._lazy import lazy_attributes


def test_lazy_attributes_import_once_and_list_the_names():
    namespace = {"__name__": "pkg", "light": 1}
    getattr_, dir_ = lazy_attributes(namespace, {"dumps": "json"})
    assert "dumps" in dir_() and "light" in dir_()
    assert getattr_("dumps") is json.dumps
    # Stored in the package: the next lookup does not reach __getattr__.
    assert namespace["dumps"] is json.dumps
    with pytest.raises(AttributeError, match="'pkg' has no attribute 'x'"):
        getattr_("x")


def test_packages_keep_their_lazy_names():
    import keras_rmac.data
    import keras_rmac.indexing
    import keras_rmac.training

    for package in (keras_rmac.data, keras_rmac.indexing, keras_rmac.training):
        assert set(package.__all__) <= set(dir(package))
        for name in package.__all__:
            assert getattr(package, name) is not None, name
        with pytest.raises(AttributeError):
            package.no_such_name  # noqa: B018
