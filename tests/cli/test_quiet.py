"""A quiet `keras-rmac`: no framework log lines, no progress redraws.

Each command runs as users run it, in a fresh `python -m keras_rmac.cli.main`
process without `TF_CPP_MIN_LOG_LEVEL`, with standard output and error
redirected to one file, which must hold no TensorFlow, absl or ScaNN log
line and no carriage return or ANSI escape; `--verbose` brings the
framework lines back.
"""

import os
import re
import subprocess
import sys
import urllib.error

import pytest

from keras_rmac.cli import _common
from keras_rmac.cli import _quiet
from keras_rmac.cli import main as cli_main
from tests.cli import photos

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

FRAMEWORK_LINE = re.compile(
    "|".join(
        [
            r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ",  # TF C++
            r"^[IWEF]\d{4} \d\d:\d\d:\d\d",  # absl (C++ and Python)
            r"absl::InitializeLog",
            r"cuInit|oneDNN|cuda|cpu_feature_guard|rebuild TensorFlow",
            r"^(DEBUG|INFO|WARNING|ERROR) (absl|tensorflow|keras|h5py)\b",
            r"^(DEBUG|INFO|WARNING|ERROR):(absl|tensorflow|keras)",
            r"\w+Warning: ",  # Python warnings.
            r"^Traceback ",
        ]
    ),
    re.MULTILINE,
)
REDRAW = re.compile(r"[\r\x08\x1b]")


def _environment():
    env = dict(os.environ)
    for name in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS"):
        env.pop(name, None)
    env["PYTHONPATH"] = REPO_ROOT
    return env


def _run(tmp_path, *argv, python_options=()):
    """`keras-rmac ARGV` in a fresh process, output to a file: (code, text)."""
    log = tmp_path / "output.log"
    with open(log, "wb") as f:
        code = subprocess.run(
            [sys.executable, *python_options, "-m", "keras_rmac.cli.main"]
            + [str(a) for a in argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=_environment(),
            cwd=tmp_path,
            timeout=600,
        ).returncode
    return code, log.read_text(errors="replace")


def assert_quiet(text):
    found = FRAMEWORK_LINE.findall(text)
    assert not found, f"framework log lines: {found}\n{text}"
    assert not REDRAW.search(text), f"progress redraws in: {text!r}"


def test_help_imports_no_tensorflow(tmp_path):
    code, text = _run(tmp_path, "--help", python_options=["-X", "importtime"])
    assert code == 0
    imported = re.findall(r"^import time:.*\|\s+(\S+)$", text, re.M)
    assert "keras_rmac.cli._quiet" in imported  # The list is complete.
    heavy = [m for m in imported if m.split(".")[0] in ("tensorflow", "keras")]
    assert not heavy
    help_text = "\n".join(
        line for line in text.splitlines() if not line.startswith("import ")
    )
    assert "usage: keras-rmac" in help_text
    for name, summary in cli_main.SUBCOMMANDS.items():
        assert name in help_text and summary.split()[0] in help_text
    assert_quiet(help_text)


def test_subcommand_help_quiet(tmp_path):
    code, text = _run(tmp_path, "index", "--help")
    assert code == 0
    assert "usage: keras-rmac index" in text
    assert "descriptor network" in text and "--weights" in text
    assert_quiet(text)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    for i in range(6):
        photos.save(root / "photos" / f"p{i}.png", photos.photo(i, 96, 80))
    photos.tiny_model(seed=0).save(root / "tiny.keras")
    return root


def test_index_search_export_quiet(workspace, tmp_path):
    model = workspace / "tiny.keras"
    index_dir = tmp_path / "index"
    code, text = _run(
        tmp_path,
        "index",
        workspace / "photos",
        "--index",
        index_dir,
        "--model",
        model,
        "--max-size",
        "64",
    )
    assert code == 0, text
    assert f"Indexed 6 photos from {workspace / 'photos'}" in text
    assert_quiet(text)

    query = workspace / "photos" / "p3.png"
    code, text = _run(tmp_path, "search", "--index", index_dir, query, "-k", 3)
    assert code == 0, text
    assert re.search(r"^\s+1\s+1\.0000\s+.*p3\.png$", text, re.M), text
    assert_quiet(text)

    out = tmp_path / "serving"
    argv = ["export", "--model", model, "--out", out, "--max-size", "64"]
    code, text = _run(tmp_path, *argv)
    assert code == 0, text
    assert f"Exported SavedModel: {out / '1'} (" in text
    assert "signatures: serving_default (image_bytes -> descriptor)" in text
    assert "descriptor: 16 float32 values" in text
    assert_quiet(text)

    # --verbose brings the framework's lines back (absl's INFO on export).
    code, text = _run(tmp_path, "--verbose", *argv)
    assert code == 0, text
    assert FRAMEWORK_LINE.search(text), text


_SCANN_SCRIPT = """
import sys
import numpy as np
from keras_rmac.cli import _quiet
from scann.scann_ops.py import scann_ops_pybind

x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)

def build():
    builder = scann_ops_pybind.builder(x, 5, "dot_product")
    builder = builder.tree(num_leaves=10, num_leaves_to_search=3)
    builder.score_ah(2, anisotropic_quantization_threshold=0.2).build()

build()
sys.stderr.write("QUIET\\n")
sys.stderr.flush()
with _quiet.quiet_logs():
    assert _quiet.quiet_scann(sys.modules["scann_pybind"])
    build()
"""


def test_scann_logging_lowered(tmp_path):
    # ScaNN's C++ logging ignores TF_CPP_MIN_LOG_LEVEL: before quiet_logs it
    # prints its INFO lines, after it none.
    log = tmp_path / "scann.log"
    with open(log, "wb") as f:
        subprocess.run(
            [sys.executable, "-c", _SCANN_SCRIPT],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=dict(_environment(), TF_CPP_MIN_LOG_LEVEL="3"),
            timeout=600,
            check=True,
        )
    loud, quiet = log.read_text().split("QUIET\n")
    assert re.search(r"^I\d{4} .*partition", loud, re.M), loud
    assert_quiet(quiet)


def test_quiet_logs_restores_state():
    import logging
    import warnings

    import keras

    absl = logging.getLogger("absl")
    before = absl.level
    keras.config.enable_interactive_logging()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        with _quiet.quiet_logs():
            assert absl.level == logging.ERROR
            # Standard output is captured by pytest: not a terminal.
            assert not keras.config.is_interactive_logging_enabled()
            with warnings.catch_warnings(record=True) as caught:
                warnings.warn("from a library", UserWarning)
            assert caught == []
        assert absl.level == before
        assert keras.config.is_interactive_logging_enabled()
        with _quiet.quiet_logs(verbose=True):
            assert absl.level == before
            assert keras.config.is_interactive_logging_enabled()
    assert not [h for h in sys.meta_path if isinstance(h, _quiet.AfterImport)]


def test_after_import_runs_callback_once():
    seen = []
    name = "tests.cli._after_import_probe"
    sys.modules.pop(name, None)
    hook = _quiet.AfterImport({name: seen.append})
    sys.meta_path.insert(0, hook)
    try:
        probe = __import__(name, fromlist=["x"])
    finally:
        sys.meta_path.remove(hook)
        sys.modules.pop(name, None)
    assert seen == [probe] and probe.VALUE == 1


def _offline(spec):
    try:
        raise urllib.error.URLError("[Errno -3] Temporary failure")
    except urllib.error.URLError as error:
        url = "https://storage.googleapis.com/x/resnet50.h5"
        raise Exception(f"URL fetch failure on {url}: None -- {error}")


def test_download_failure_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "build_model", _offline)
    argv = ["export", "--weights", "imagenet", "--out", tmp_path / "o"]
    assert cli_main.main(argv) == 1
    err = capsys.readouterr().err
    assert err == f"keras-rmac export: error: {_common.DOWNLOAD_HINT}\n"
    assert "--weights FILE" in err
    # --verbose adds the traceback.
    assert cli_main.main(["-v"] + argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "URL fetch failure" in err
    assert err.endswith(f"keras-rmac export: error: {_common.DOWNLOAD_HINT}\n")


def test_unexpected_error_is_one_line(tmp_path, monkeypatch, capsys):
    def broken(spec):
        raise KeyError("backbone\nsecond line")

    monkeypatch.setattr(_common, "build_model", broken)
    assert cli_main.main(["export", "--out", tmp_path / "o"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("keras-rmac export: error: KeyError: ")
    assert "(--verbose shows where)" in err


def test_subcommand_summaries_match_modules():
    import importlib

    for name, summary in cli_main.SUBCOMMANDS.items():
        parser = cli_main.build_parser(name)
        actions = [a for a in parser._actions if a.dest == "command"]
        choices = {c.dest: c.help for c in actions[0]._choices_actions}
        assert choices[name] == summary, name
        module = importlib.import_module(cli_main.module_name(name))
        assert module.run is parser.parse_args([name, *_REQUIRED[name]]).run


_REQUIRED = {
    "index": ["photos", "--index", "i"],
    "search": ["q.jpg", "--index", "i"],
    "serve": ["--index", "i"],
    "export": ["--out", "o"],
    "train": ["--train-dir", "d", "--out", "o"],
    "clean": ["list.csv", "--out", "o.csv"],
    "train-rpn": ["boxes.csv", "--out", "o"],
}


def test_split_argv():
    split = cli_main._split
    assert split([]) == (None, False)
    assert split(["--help"]) == (None, False)
    assert split(["-v", "index", "p", "--index", "i"]) == ("index", True)
    assert split(["index", "-v"]) == ("index", False)
    assert split(["--verbose", "nope"]) == (None, True)


def test_library_root_filter():
    import logging

    def record(name, level, path):
        return logging.LogRecord(name, level, path, 1, "note", None, None)

    keep = _quiet.LibraryRootFilter().filter
    beam = os.path.join(os.sep, "site", "apache_beam", "io", "gcp.py")
    assert not keep(record("root", logging.WARNING, beam))
    assert keep(record("root", logging.ERROR, beam))
    assert keep(record("root", logging.WARNING, "/site/mine.py"))
    assert keep(record("apache_beam.io", logging.WARNING, beam))


def test_beam_import_quiet():
    pytest.importorskip("apache_beam")
    code = (
        "from keras_rmac.cli import _quiet\n"
        "with _quiet.quiet_logs():\n"
        "    import apache_beam\n"
        "import logging\n"
        "logging.warning('after the run')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert result.returncode == 0, result.stderr
    # Beam's import-time root-logger note is gone; the filter is removed
    # with the quiet mode, so a later root warning still prints.
    assert "apitools" not in result.stderr, result.stderr
    assert "after the run" in result.stderr
