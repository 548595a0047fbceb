"""The docstring examples (`>>>`) of every module of keras_rmac, as tests.

One test per module, found by walking the package, so a new module's
examples run without being listed here. An example that cannot run here
carries `# doctest: +SKIP`, and its module is listed in `NOT_RUNNABLE` with
the reason (a check below keeps the list and the directives in step).
"""

import doctest
import importlib
import importlib.util
import pkgutil

import pytest

import keras_rmac

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(keras_rmac.__path__, "keras_rmac.")
)

# Modules with examples marked `# doctest: +SKIP`, and why they cannot run.
NOT_RUNNABLE = {
    "keras_rmac.export.saved_model": (
        "exports a full backbone as a SavedModel (minutes, a model folder)"
    ),
    "keras_rmac.indexing": (
        "indexes and searches a photo folder with a full backbone: needs "
        "photos and weights"
    ),
    "keras_rmac.indexing.photo_index": (
        "searches an index built from photos with a full backbone"
    ),
    "keras_rmac.indexing.run": (
        "indexes a photo folder with a full backbone: needs photos and weights"
    ),
    "keras_rmac.models.rmac_model": (
        "extracts descriptors of image files with a full backbone"
    ),
    "keras_rmac.serve": (
        "serves an index built from photos, over HTTP (uvicorn)"
    ),
    "keras_rmac.serve.engine": (
        "opens an index built from photos and searches it"
    ),
    "keras_rmac.beam.folder": (
        "indexes a photo folder with a full backbone on a Beam runner"
    ),
    "keras_rmac.models.listwise_model": (
        "fine-tunes from ImageNet weights (a download) on class batches"
    ),
    "keras_rmac.models.triplet_model": (
        "fine-tunes from ImageNet weights (a download) on a triplet dataset"
    ),
}

NEEDS = {
    # Examples that need an optional extra (`pip install keras-rmac[clean]`).
    "keras_rmac.data.cleaning.dataset": "cv2",
    # `pip install keras-rmac[serve]`.
    "keras_rmac.serve": "starlette",
    "keras_rmac.serve.app": "starlette",
}
# Every module of keras_rmac.beam needs `pip install keras-rmac[beam]`.
NEEDS.update(
    {
        name: "apache_beam"
        for name in MODULES
        if name.startswith("keras_rmac.beam")
    }
)


def _installed(name):
    return name not in NEEDS or importlib.util.find_spec(NEEDS[name])


def _examples(module):
    """Doctests of `module`'s own objects (as `doctest.testmod` finds)."""
    return doctest.DocTestFinder().find(module, module.__name__)


def _param(name):
    if name in NEEDS:
        mark = pytest.mark.skipif(
            importlib.util.find_spec(NEEDS[name]) is None,
            reason=f"needs {NEEDS[name]} (an optional extra)",
        )
        return pytest.param(name, marks=mark, id=name)
    return pytest.param(name, id=name)


@pytest.mark.parametrize("name", [_param(name) for name in MODULES])
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    # Examples that write files write them in a fresh folder.
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(verbose=False)
    report = []
    for test in _examples(module):
        runner.run(test, out=report.append)
    failed, _ = runner.summarize(verbose=False)
    assert failed == 0, "".join(report)


def test_not_runnable_list_matches_the_skipped_examples():
    skipping = set()
    for name in MODULES:
        if not _installed(name):
            skipping.update({name} & set(NOT_RUNNABLE))  # Cannot look.
            continue
        module = importlib.import_module(name)
        if any(
            example.options.get(doctest.SKIP)
            for test in _examples(module)
            for example in test.examples
        ):
            skipping.add(name)
    assert skipping - set(NOT_RUNNABLE) == set(), (
        "these modules skip examples: list them in NOT_RUNNABLE with the reason"
    )
    assert set(NOT_RUNNABLE) - skipping == set(), (
        "these modules no longer skip examples (or were renamed): update "
        "NOT_RUNNABLE"
    )


def test_the_walk_sees_the_package():
    # Guards the tests above against passing vacuously on an empty walk.
    assert len(MODULES) > 40
    assert "keras_rmac.layers.functional" in MODULES
    assert set(NEEDS) <= set(MODULES)
