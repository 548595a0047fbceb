"""Framework log lines only with `--verbose`: the command line's quiet mode.

Four sources print on their own when TensorFlow, Keras and ScaNN run:

- TensorFlow's C++ logging (start-up lines, some of them twice, and an
  error-level `cuInit` line on machines without a GPU driver). It reads
  `TF_CPP_MIN_LOG_LEVEL` once, at its first message, which comes while
  TensorFlow is imported: `quiet_logs` must run before that import.
- ScaNN's C++ logging (absl's `LOG`, linked into its Python extension, not
  TensorFlow's): no environment variable controls it, so its
  `absl::SetMinLogLevel` is called right after the extension is imported.
- Python logging of absl (SavedModel export writes ~15 KB at INFO),
  `tensorflow` and `keras`, and Python warnings of those libraries.
- Keras progress bars (`fit`, `predict`), which redraw with carriage
  returns: with standard output not a terminal, Keras's interactive logging
  is turned off, which sends them to absl's INFO log, quiet by default.

A variable the user already set in the environment is left as it is.
"""

import contextlib
import ctypes
import importlib.abc
import logging
import os
import sys
import warnings

FRAMEWORK_LOGGERS = (
    "absl",
    "tensorflow",
    "keras",
    "h5py",
    "PIL",
    "urllib3",
    "apache_beam",
)
"""Python loggers of libraries, raised to ERROR in quiet mode."""

_ROOT_CALLERS = (f"{os.sep}apache_beam{os.sep}",)


class LibraryRootFilter(logging.Filter):
    """Drops records below ERROR that a library logs on the root logger.

    Apache Beam logs some notes through `logging.warning(...)` itself (e.g.
    "apitools not found" on import), which no named logger's level reaches.
    """

    def filter(self, record):
        return not (
            record.name == "root"
            and record.levelno < logging.ERROR
            and any(part in record.pathname for part in _ROOT_CALLERS)
        )


TF_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
QUIET_TF_LOG_LEVEL = "3"
"""Fatal only: level 2 still prints the spurious `cuInit` error line."""

# absl::SetMinLogLevel(absl::LogSeverityAtLeast) of the absl LTS release that
# scann 1.4.2 links in (setup.py pins it). Looked up by name; when a release
# exports another name, nothing is changed and the tests of this module fail.
_ABSL_SET_MIN_LOG_LEVEL = (
    "_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE"
)
_ABSL_ERROR = 2
_SCANN_EXTENSION = "scann_pybind"


def quiet_scann(module) -> bool:
    """Sets the C++ log level of ScaNN's extension `module` to errors.

    Returns:
        True when the level was set, False when the extension exports no
        known setter (its log lines then stay).
    """
    try:
        library = ctypes.CDLL(module.__file__)
        setter = getattr(library, _ABSL_SET_MIN_LOG_LEVEL)
    except (OSError, AttributeError, TypeError):
        return False
    setter.argtypes = [ctypes.c_int]
    setter.restype = None
    setter(_ABSL_ERROR)
    return True


class _Loader(importlib.abc.Loader):
    """Another loader, with a callback once the module has run."""

    def __init__(self, loader, callback):
        self.loader = loader
        self.callback = callback

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.callback(module)


class AfterImport(importlib.abc.MetaPathFinder):
    """Runs `callbacks[name](module)` right after module `name` is imported.

    Args:
        callbacks: dict mapping a full module name to a function of the
            module. Modules already imported get their callback at once.
    """

    def __init__(self, callbacks: dict):
        self.callbacks = dict(callbacks)
        for name in list(self.callbacks):
            if name in sys.modules:
                self.callbacks.pop(name)(sys.modules[name])

    def find_spec(self, fullname, path, target=None):
        callback = self.callbacks.get(fullname)
        if callback is None:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None:
            spec.loader = _Loader(spec.loader, callback)
        return spec


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def quiet_logs(verbose: bool = False):
    """Configures logging for one `keras-rmac` run; restores it on exit.

    Sets `TF_CPP_MIN_LOG_LEVEL` (3, or 0 with `verbose`) unless already in
    the environment, gives the root logger a stderr handler at INFO when it
    has none (`keras_rmac` at DEBUG with `verbose`), and without `verbose`
    raises `FRAMEWORK_LOGGERS` to ERROR, ignores warnings not raised from
    `keras_rmac`, lowers ScaNN's C++ logging to errors, and turns Keras's
    interactive progress off when standard output is not a terminal.
    Environment variables and ScaNN's C++ level are process-wide and stay.

    Args:
        verbose: bool. Leave the frameworks' logging as they set it.
    """
    os.environ.setdefault(TF_LOG_LEVEL, "0" if verbose else QUIET_TF_LOG_LEVEL)
    logging.basicConfig(
        level=logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    loggers = [logging.getLogger(name) for name in FRAMEWORK_LOGGERS]
    package = logging.getLogger("keras_rmac")
    levels = {logger: logger.level for logger in loggers + [package]}
    hook = None
    root_filter = LibraryRootFilter()
    silenced = []  # Keras modules whose interactive logging was turned off.

    def quiet_keras(keras):
        if keras.config.is_interactive_logging_enabled():
            keras.config.disable_interactive_logging()
            silenced.append(keras)

    with warnings.catch_warnings():
        if verbose:
            package.setLevel(logging.DEBUG)
        else:
            for logger in loggers:
                logger.setLevel(logging.ERROR)
            # keras_rmac's own progress notes (models built, indexes saved)
            # only with -v; its warnings and errors always.
            package.setLevel(logging.WARNING)
            for handler in logging.getLogger().handlers:
                handler.addFilter(root_filter)
            warnings.filterwarnings("ignore")
            warnings.filterwarnings("default", module=r"keras_rmac(\.|$)")
            callbacks = {_SCANN_EXTENSION: quiet_scann}
            if not _is_terminal(sys.stdout):
                callbacks["keras"] = quiet_keras
            hook = AfterImport(callbacks)
            sys.meta_path.insert(0, hook)
        try:
            yield
        finally:
            if hook is not None:
                sys.meta_path.remove(hook)
            for keras in silenced:
                keras.config.enable_interactive_logging()
            for handler in logging.getLogger().handlers:
                handler.removeFilter(root_filter)
            for logger, level in levels.items():
                logger.setLevel(level)
