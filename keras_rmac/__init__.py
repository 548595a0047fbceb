from keras_rmac.version import __version__  # noqa: F401
