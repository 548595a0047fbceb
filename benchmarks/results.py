"""Writes one benchmark's section of benchmarks/RESULTS.md.

Each benchmark owns the text between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` and replaces only that, so benchmarks run separately
keep each other's figures. The file is replaced atomically.
"""

import os
import pathlib
import platform
import tempfile
import time

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"
DATA_DIR = os.environ.get(
    "KERAS_RMAC_DATA",
    str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"),
)
"""The shared data folder: `$KERAS_RMAC_DATA`, else `../shared/data`."""
HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `benchmarks/`; each section says the command "
    "that produced it. Absolute times drift on shared machines: compare "
    "ratios measured within one run.\n"
)


def machine() -> str:
    """A one-line description of where the numbers were measured."""
    return (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )


def load_text(before, after, minutes) -> str:
    """The load averages (`os.getloadavg()`) before and after a run of
    `minutes`, as the sections quote them."""
    return (
        f"load average (1, 5, 15 min) {before[0]:.2f}, {before[1]:.2f}, "
        f"{before[2]:.2f} before and {after[0]:.2f}, {after[1]:.2f}, "
        f"{after[2]:.2f} after ({minutes:.1f} min)"
    )


def markdown_table(header, rows) -> str:
    """A GitHub markdown table from a header list and rows of cells."""
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, body: str, path=RESULTS) -> None:
    """Replaces (or appends) section `name` of RESULTS.md with `body`."""
    path = pathlib.Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def define_data_dir() -> None:
    """Defines the benchmarks' `--data_dir` flag (default `DATA_DIR`),
    unless a module imported before has."""
    from absl import flags

    if "data_dir" not in flags.FLAGS:
        flags.DEFINE_string(
            "data_dir", DATA_DIR, "Folder holding coil100/ and weights/."
        )
