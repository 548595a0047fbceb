"""Kill an indexing run at a chosen point, from the test (no library hook).

`kill_at(point, cli_args, tmp_path)` starts `keras-rmac index ...` in a
subprocess (this module run with `-m`), in which the chosen step is
wrapped to write a flag file and then wait; the test polls for the flag
and sends SIGKILL, so the process dies exactly there, as `kill -9` would.

Points:
    `commit:K`: right after the K-th committed shard of the store.
    `switch`: after the new version is built, before the marker names it.
"""

import os
import signal
import subprocess
import sys
import time

from keras_rmac.indexing import layout
from keras_rmac.indexing import store as store_module

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _stop(flag: str) -> None:
    with open(flag, "w") as f:
        f.write("stopped\n")
    time.sleep(600)  # Killed by the test long before.


def _wrap(point: str, flag: str) -> None:
    if point.startswith("commit:"):
        count = int(point.split(":")[1])
        commit = store_module.DescriptorStore.commit
        seen = []

        def counting_commit(self, *args, **kwargs):
            number = commit(self, *args, **kwargs)
            seen.append(number)
            if len(seen) >= count:
                _stop(flag)
            return number

        store_module.DescriptorStore.commit = counting_commit
    elif point == "switch":
        layout.switch_to = lambda *args, **kwargs: _stop(flag)
    else:
        raise ValueError(f"unknown point {point!r}")


def main(argv) -> int:
    point, flag, *args = argv
    _wrap(point, flag)
    from tests.cli.photos import cli

    return cli(args)


def kill_at(point: str, args, tmp_path, timeout: float = 300) -> None:
    """Runs `keras-rmac <args>` in a subprocess and SIGKILLs it at `point`.

    Raises:
        AssertionError: the run ended (or timed out) before `point`.
    """
    flag = tmp_path / f"stopped-{time.monotonic_ns()}"
    log = tmp_path / f"{flag.name}.log"
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-m", "tests.indexing.interrupt", point]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [*command, str(flag), *map(str, args)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        deadline = time.monotonic() + timeout
        try:
            while not flag.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the run did not reach {point} (exit status "
                        f"{proc.returncode}):\n{log.read_text()[-3000:]}"
                    )
                time.sleep(0.02)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None and not flag.exists():
                proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
