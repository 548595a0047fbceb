"""`keras-rmac --help` and every sub-command's `--help` without TensorFlow.

Printing help, choices and defaults included, must import neither Keras nor
TensorFlow (seconds of start-up). Checked in a fresh process set up as the
`keras-rmac` command's own (where `keras_rmac/__init__` imports lazily).
"""

import json
import os
import subprocess
import sys

from keras_rmac.cli import _common
from keras_rmac.cli import main as cli_main

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

_PROBE = """
import contextlib, io, json, sys
sys.argv[0] = "keras-rmac"
from keras_rmac.cli import main
report = {}
for command in sys.argv[1:]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        main.main(command.split() + ["--help"])
    heavy = sorted({"keras", "tensorflow"} & set(sys.modules))
    report[command] = {"help": out.getvalue(), "heavy": heavy}
print(json.dumps(report))
"""


def test_every_help_imports_no_keras_or_tensorflow():
    commands = ["", *cli_main.SUBCOMMANDS]
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *commands],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    # In command order: modules stay imported, so the first one listed
    # with a framework is the one that imports it.
    for command in commands:
        usage = " ".join(["usage: keras-rmac", command]).strip()
        assert usage in report[command]["help"], command
        assert report[command]["heavy"] == [], f"{command or '-'} --help"
    # The choices and defaults read without Keras are those printed.
    text = {c: " ".join(r["help"].split()) for c, r in report.items()}
    backbones = "{" + ",".join(_common.BACKBONE_CHOICES) + "}"
    for command in ("index", "train", "train-rpn"):
        assert backbones in text[command], command
        assert "{gem,mac,rmac,spoc}" in text[command], command
    assert "(default: (1.0, 2.0, 4.0, 8.0))" in text["train-rpn"]
    assert "(default: contrastive)" in text["train"]
