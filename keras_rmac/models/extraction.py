"""The inference path of `RMACModel.extract`: batches in, descriptors out.

What the hot loop does, and why (issue 12, "extraction at the backbone's
speed"):

- **Arrays stay one array.** An `(N, H, W, 3)` array is cut into
  contiguous slices of `batch_size` images; pixels already float32 are
  neither copied nor stacked again in Python (a `(B, H, W, 3)` batch is
  what the bare backbone is fed too). A batch that needs resizing is
  resized in one TensorFlow call (the same result as image by image).
- **Lists, datasets and files are prepared ahead.** Resizing, grouping
  by shape and stacking run in a background thread, `prefetch` chunks
  ahead of the network, so they overlap with it; image files are decoded
  by `keras_rmac.data.image_io.load_images`, whose thread pool decodes
  ahead of that (Pillow, with the bad-file policy; TensorFlow and Pillow
  release the GIL while they work).
- **One traced function per model, kind and option set.** The float32
  function has unknown batch, height and width, so it is traced once,
  never again. With `jit_compile=True` (XLA) a function is traced per
  input height and width, which XLA needs anyway (it compiles per shape).
- **Precision.** `precision="mixed_float16"` or `"mixed_bfloat16"` traces
  the model with every backbone layer (and those of the RPN's frozen
  copy of the backbone tail) under that Keras dtype policy (variables
  stay float32 and are read live, so training or `adapt_pca` afterwards
  is seen); descriptors come back as float32. For accelerators: on CPU
  these are slow.
"""

import contextlib
import queue
import threading

import numpy as np
import tensorflow as tf

from keras_rmac.data.resize import resize_longest_side
from keras_rmac.models.value_range import rescale_to_255

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
"""Values of `precision=`: Keras dtype policy names."""

_PREFETCH = 2  # chunks prepared ahead of the network


def validate_precision(precision: str) -> str:
    """`precision` checked against `PRECISIONS`.

    Example:

    >>> validate_precision("mixed_float16")
    'mixed_float16'
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"Unknown precision={precision!r}; choose one of {PRECISIONS} "
            "(float32 is exact; the mixed ones are for accelerators)."
        )
    return precision


@contextlib.contextmanager
def backbone_policy(model, policy: str):
    """The layers of `model.backbone` under the Keras dtype policy `policy`.

    Only the backbone, and the RPN's frozen copy of its tail when there is
    one (`proposal_from`: it computes what the backbone computes): the
    preprocessing and the R-MAC head stay float32 (the head casts the
    features back, the RPN its maps), so the descriptor loses only the
    backbone's rounding. The previous policies are restored on exit. Used
    while tracing: the traced graph keeps the precision it was traced
    with.
    """
    if policy == "float32":
        yield
        return
    networks = [model.backbone]
    if getattr(model, "proposal_tail", None) is not None:
        networks.append(model.proposal_tail)
    layers = [
        layer
        for network in networks
        for layer in network._flatten_layers(include_self=True, recursive=True)
    ]
    saved = [layer.dtype_policy for layer in layers]
    try:
        for layer in layers:
            layer.dtype_policy = policy
        yield
    finally:
        for layer, old in zip(layers, saved):
            layer.dtype_policy = old


RUN_OPTIONS = ("precision", "jit_compile")


def check_run_options(options: dict, where: str) -> dict:
    """`options` checked to be among `RUN_OPTIONS` (else `TypeError`)."""
    unknown = sorted(set(options) - set(RUN_OPTIONS))
    if unknown:
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {unknown}; the "
            f"run options are {RUN_OPTIONS}."
        )
    return options


class Runner:
    """Runs one of an `RMACModel`'s functions on float32 batches.

    Args:
        model: the `RMACModel`.
        kind: `"descriptor"` (the model: `(B, D)`) or `"regions"`
            (`region_vectors`: `(B, R, C)`).
        precision: str. One of `PRECISIONS`. Defaults to `"float32"`.
        jit_compile: bool. Compile with XLA. Defaults to `False`.

    Traced functions are kept in `model._functions`, so they live as long
    as the model (and `adapt_pca` can drop them).
    """

    def __init__(self, model, kind, *, precision="float32", jit_compile=False):
        if not isinstance(jit_compile, bool):
            raise ValueError(
                f"`jit_compile` must be True or False, got {jit_compile!r}."
            )
        self.model = model
        self.kind = kind
        self.precision = validate_precision(precision)
        self.jit_compile = jit_compile

    def _traced(self, height, width, dtype):
        # XLA compiles per shape anyway, and the region grid must be
        # static for it: one function per (height, width). Otherwise a
        # single function with unknown height and width.
        shape = (height, width) if self.jit_compile else (None, None)
        key = (self.kind, self.precision, self.jit_compile, shape, dtype)
        functions = self.model._functions
        if key not in functions:
            model = self.model
            if self.kind == "descriptor":

                def body(x):
                    return model(tf.cast(x, tf.float32), training=False)

            else:

                def body(x):
                    x = tf.cast(x, tf.float32)
                    return model.region_vectors(x, training=False)

            spec = tf.TensorSpec([None, *shape, 3], dtype)
            fn = tf.function(body, jit_compile=self.jit_compile)
            with backbone_policy(model, self.precision):
                functions[key] = fn.get_concrete_function(spec)
        return functions[key]

    def __call__(self, batch):
        """`(B, H, W, 3)` float32 or uint8 array -> float32 NumPy outputs.

        uint8 pixels are cast to float32 in the graph (exactly, and with a
        quarter of the bytes to hand over); other dtypes here.
        """
        batch = _pixels(batch)
        fn = self._traced(*batch.shape[1:3], batch.dtype.name)
        out = fn(tf.convert_to_tensor(batch))
        return np.asarray(out).astype(np.float32, copy=False)


def chunks(source, batch_size):
    """Consecutive chunks of `batch_size` images (the last may be shorter).

    A 4-D NumPy array gives contiguous slices of itself (no copy); any
    other iterable gives lists.
    """
    if isinstance(source, np.ndarray):
        for start in range(0, len(source), batch_size):
            yield source[start : start + batch_size]
        return
    chunk = []
    for item in source:
        chunk.append(item)
        if len(chunk) == batch_size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _float32(images):
    return np.asarray(images, np.float32)


def _pixels(images):
    """uint8 and float32 pixels as they are, any other dtype as float32."""
    images = np.asarray(images)
    if images.dtype in (np.uint8, np.float32):
        return images
    return _float32(images)


def prepare(chunk, size_fns, value_range=None):
    """The network's batches for one chunk, at every scale.

    Args:
        chunk: a `(B, H, W, 3)` array or a list of `(H, W, 3)` arrays.
        size_fns: one function per scale, image -> longest side to
            resize it to (None: keep it).
        value_range: validated `(low, high)` to map onto [0, 255], or
            None.

    Returns:
        One list per scale of `(indices, batch)`: the positions in `chunk`
        of the images of each batch (images of one resized shape and
        dtype: uint8 pixels not resized stay uint8, the rest is float32).
    """
    if value_range is not None:
        if isinstance(chunk, np.ndarray):
            chunk = rescale_to_255(chunk, value_range)
        else:
            chunk = [rescale_to_255(im, value_range) for im in chunk]
    if isinstance(chunk, np.ndarray):
        everything = list(range(len(chunk)))
        out = []
        for size_fn in size_fns:
            size = size_fn(chunk[0])
            if size is None or max(chunk.shape[1:3]) == size:
                batch = _pixels(chunk)
            else:
                batch = resize_longest_side(_float32(chunk), int(size))
                batch = batch.numpy()
            out.append([(everything, batch)])
        return out
    out = []
    for size_fn in size_fns:
        groups = {}
        for i, image in enumerate(chunk):
            size = size_fn(image)
            if size is None or max(image.shape[:2]) == size:
                image = _pixels(image)
            else:
                image = resize_longest_side(_float32(image), int(size))
                image = image.numpy()
            key = (image.shape, image.dtype.name)
            groups.setdefault(key, []).append((i, image))
        out.append(
            [
                ([i for i, _ in group], np.stack([im for _, im in group]))
                for group in groups.values()
            ]
        )
    return out


def run_prepared(runner, prepared, count, stack=True):
    """Per scale, the outputs of `runner` for a chunk, in chunk order.

    With `stack`, one `(count, ...)` array per scale (outputs of one shape,
    such as descriptors); else a list of `count` per-image arrays (region
    vectors, whose number depends on the image's shape).
    """
    per_scale = []
    for groups in prepared:
        rows = [None] * count
        for indices, batch in groups:
            values = runner(batch)
            if stack and len(groups) == 1:
                rows = values  # Already in chunk order.
                break
            for i, value in zip(indices, values):
                rows[i] = value
        per_scale.append(np.stack(rows) if stack and len(groups) > 1 else rows)
    return per_scale


_DONE = object()


class _Failure:
    def __init__(self, error):
        self.error = error


def prefetched(iterator, depth=_PREFETCH):
    """Items of `iterator`, produced `depth` ahead in a background thread.

    An exception of the producer is raised in the consumer, in order;
    closing the generator early stops the producer.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item):
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in iterator:
                if not put(item):
                    return
        except BaseException as exc:  # Re-raised in the consumer.
            put(_Failure(exc))
            return
        finally:
            # Stops what the source runs (e.g. the decoding thread pool)
            # here, not whenever it is garbage collected.
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
        put(_DONE)

    thread = threading.Thread(
        target=produce, name="keras_rmac_prepare", daemon=True
    )
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def prepared_chunks(source, batch_size, size_fns, value_range=None):
    """`(chunk length, prepare(chunk))` for every chunk of `source`.

    A NumPy array (slicing costs nothing) and a list of at most one
    chunk (nothing to overlap with) are prepared in the calling thread;
    anything else (lists, datasets, decoded files) in a background thread
    ahead of the network.
    """

    def generate():
        for chunk in chunks(source, batch_size):
            yield len(chunk), prepare(chunk, size_fns, value_range)

    if isinstance(source, np.ndarray) or (
        isinstance(source, list) and len(source) <= batch_size
    ):
        return generate()
    return prefetched(generate())
