"""House rules that keep the package easy to change (see ../shared/STYLE.md)."""

import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_rmac"
MAX_MODULE_LINES = 600


@pytest.mark.parametrize(
    "module",
    sorted(PACKAGE.rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE.parent)),
)
def test_no_module_over_600_lines(module):
    lines = len(module.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{module.relative_to(PACKAGE.parent)} has {lines} lines; split it "
        f"by job (at most {MAX_MODULE_LINES})."
    )


def test_the_size_check_sees_the_package():
    # Guards the test above against passing vacuously on a wrong path.
    assert len(list(PACKAGE.rglob("*.py"))) > 20
