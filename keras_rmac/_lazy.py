"""Names of a package imported on first use (PEP 562).

A package whose modules import Keras and TensorFlow lists them in a table
`{name: module}` and gets its module-level `__getattr__` and `__dir__`
from `lazy_attributes`, so that importing the package (and reading its
light names) does not load the frameworks.
"""

import importlib


def lazy_attributes(namespace, table):
    """`(__getattr__, __dir__)` for a package.

    Args:
        namespace: dict. The package's `globals()`; an imported name is
            stored there, so `__getattr__` runs once per name.
        table: dict. `{name: absolute module name}` of the lazy names.

    Returns:
        The two functions, to assign to `__getattr__` and `__dir__`.
    """

    def __getattr__(name):
        module = table.get(name)
        if module is None:
            raise AttributeError(
                f"module {namespace['__name__']!r} has no attribute {name!r}"
            )
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
