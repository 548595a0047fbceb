"""`keras-rmac serve`: an index searched over HTTP, with a web page.

`SearchEngine` (`engine`) holds the index and the model, runs queries on
one model thread and follows new index versions; `create_app` (`app`)
is the Starlette application around it (JSON API, thumbnails, the page).
Needs the `serve` extra: `pip install keras-rmac[serve]`.

Example:

>>> from keras_rmac.serve import SearchEngine, create_app  # doctest: +SKIP
>>> app = create_app(SearchEngine("photos_index"))  # doctest: +SKIP
>>> import uvicorn; uvicorn.run(app, port=8080)  # doctest: +SKIP
"""

from keras_rmac.serve.app import ServeConfig
from keras_rmac.serve.app import create_app
from keras_rmac.serve.engine import EngineBusy
from keras_rmac.serve.engine import Hit
from keras_rmac.serve.engine import PhotoNotFound
from keras_rmac.serve.engine import SearchEngine

__all__ = [
    "EngineBusy",
    "Hit",
    "PhotoNotFound",
    "SearchEngine",
    "ServeConfig",
    "create_app",
]
