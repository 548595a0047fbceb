"""Image decoding with TensorFlow ops, for the exported serving graph.

`decode_image_bytes` is the in-graph counterpart of
`keras_rmac.data.image_io.load_image`: the `serving_default` signature of
an exported model decodes the files a client sends with it, in a
SavedModel that runs without Python.

Bad input: an image that cannot be decoded (empty string, not an image,
truncated or corrupt file), one smaller than `min_side`, or one whose
header declares more than `max_pixels` pixels makes the request fail with
`InvalidArgumentError` (HTTP 400 from TF Serving's REST API) naming the
problem; the server keeps running. The whole batch is rejected when any of
its images is bad: send images one per request, or retry without the
offending one, when partial results are wanted. The pixel limit is checked
on the JPEG, PNG and GIF headers before any pixel is decoded (the
decompression-bomb guard of `image_io.load_image`); BMP and WebP are
checked after decoding.

Large JPEGs: as `load_image`, a JPEG declaring more than `draft_above`
pixels is decoded at reduced scale (`tf.io.decode_jpeg(ratio=...)`, which
gives Pillow's `Image.draft` output pixel for pixel: both are libjpeg's
DCT scaling), and only its reduced size must fit in `max_pixels` (its
declared size for a progressive JPEG); the rules are in
`keras_rmac.data.pixel_limits`. The export passes the largest size it
resizes to as `draft_size`, so served descriptors stay equal to
`RMACModel.extract`'s.

Decoding follows `keras_rmac.data.image_io.load_image`, pixel for pixel,
for JPEG (grayscale, RGB and CMYK: accurate integer DCT with fancy
upsampling, as Pillow), PNG of every colour type (8-bit, palette, gray,
alpha composited on white, 16-bit gray `round(v / 257)` and 16-bit colour
high byte), BMP, WebP without alpha and GIF without transparency. Known
differences, which the client should take care of where they matter:
EXIF orientation is not applied (send upright pixels), GIF transparency and
WebP alpha are not composited on white, 16-bit PNG with a `tRNS` entry may
differ by 1 level, and for animated files both use the first frame.
"""

import tensorflow as tf

from keras_rmac.data import image_io
from keras_rmac.data import pixel_limits

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_HEAD = 32  # Header bytes read to find the declared size.


def _decode_png(data):
    # Native channels (1 gray, 2 gray + alpha, 3 RGB, 4 RGBA; palettes are
    # expanded) at 16 bits, so 16-bit files keep their precision; 8-bit
    # values v come out as 257 * v.
    x = tf.cast(tf.io.decode_png(data, channels=0, dtype=tf.uint16), tf.int32)
    channels = tf.shape(x)[-1]

    def gray():
        # round(v / 257), half up: 16-bit gray as image_io, 8-bit exact.
        return tf.tile((2 * x[..., :1] + 257) // 514, [1, 1, 3])

    def color():
        return x[..., :3] // 256  # High byte, as Pillow reduces 16-bit RGB.

    def alpha():
        return x[..., -1:] // 256

    def opaque():
        return tf.fill(tf.concat([tf.shape(x)[:2], [1]], 0), 255)

    rgb = tf.cond(channels < 3, gray, color)
    a = tf.cond(tf.equal(channels % 2, 0), alpha, opaque)
    # Alpha composited on white, rounded, as image_io does.
    out = (rgb * a + 255 * (255 - a) + 127) // 255
    return tf.cast(out, tf.uint8)


def _decode_jpeg(data, scale):
    """JPEG decoded at DCT scale 1/`scale` (int32 tensor: 1, 2, 4 or 8)."""

    def at(ratio):
        # Accurate integer DCT and fancy upsampling: Pillow's libjpeg
        # defaults, with or without its draft scaling.
        return lambda: tf.io.decode_jpeg(
            data, channels=3, ratio=ratio, dct_method="INTEGER_ACCURATE"
        )

    ratios = (1,) + tuple(sorted(pixel_limits.JPEG_SCALES))
    index = tf.argmax(
        tf.equal(tf.constant(ratios), scale), output_type=tf.int32
    )
    return tf.switch_case(index, [at(r) for r in ratios])


# SOF markers of progressive JPEGs (SOF2, SOF6, SOF10, SOF14), as Pillow.
_PROGRESSIVE = (0xC2, 0xC6, 0xCA, 0xCE)
_MAX_SEGMENTS = 1000  # Markers walked before giving up (not progressive).


def _jpeg_progressive(data):
    """Whether a JPEG's frame header (SOF marker) is a progressive one.

    Walks the marker segments from the start of the file up to the first
    SOF marker, as Pillow's JPEG parser does.
    """
    length = tf.strings.length(data)

    def cond(pos, marker, steps):
        return (
            (pos + 4 <= length) & tf.equal(marker, 0) & (steps < _MAX_SEGMENTS)
        )

    def body(pos, marker, steps):
        b = tf.cast(
            tf.io.decode_raw(tf.strings.substr(data, pos, 4), tf.uint8),
            tf.int32,
        )
        code = b[1]
        is_sof = (
            (code >= 0xC0)
            & (code <= 0xCF)
            & tf.logical_not(
                tf.equal(code, 0xC4)
                | tf.equal(code, 0xC8)
                | tf.equal(code, 0xCC)
            )
        )
        standalone = tf.equal(code, 0x01) | ((code >= 0xD0) & (code <= 0xD7))
        step = tf.where(
            tf.equal(code, 0xFF) | standalone, 1, 2 + b[2] * 256 + b[3]
        )
        step = tf.where(standalone, 2, step)
        marker = tf.where(
            tf.not_equal(b[0], 0xFF), -1, tf.where(is_sof, code, 0)
        )
        return pos + step, marker, steps + 1

    _, marker, _ = tf.while_loop(
        cond, body, (tf.constant(2), tf.constant(0), tf.constant(0))
    )
    return tf.reduce_any(tf.equal(marker, tf.constant(_PROGRESSIVE)))


def _jpeg_scale(height, width, draft_size, draft_above):
    """`pixel_limits.jpeg_scale` on int64 tensors, as an int32 tensor."""
    if draft_size is None or draft_above is None:
        return tf.constant(1, tf.int32)
    longest = tf.maximum(height, width)
    shortest = tf.minimum(height, width)
    scale = tf.constant(1, tf.int64)
    for s in sorted(pixel_limits.JPEG_SCALES):  # The largest that fits wins.
        need = pixel_limits.DRAFT_MARGIN * s * draft_size
        fits = (longest >= need) & (shortest >= s)
        scale = tf.where(fits, tf.constant(s, tf.int64), scale)
    scale = tf.where(height * width > draft_above, scale, 1)
    return tf.cast(scale, tf.int32)


def _decode_other(data):
    # GIF (first frame), BMP, WebP; raises on empty or unknown data.
    return tf.io.decode_image(data, channels=3, expand_animations=False)


def _declared_size(data):
    """`(height, width)` int64 from the file header, `(0, 0)` if unknown."""
    head = tf.strings.substr(data, 0, _HEAD)
    head = tf.strings.substr(tf.strings.join([head, b"\0" * _HEAD]), 0, _HEAD)
    b = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def big_endian(i):
        return b[i] * 16777216 + b[i + 1] * 65536 + b[i + 2] * 256 + b[i + 3]

    def png():
        return big_endian(20), big_endian(16)

    def gif():
        return b[9] * 256 + b[8], b[7] * 256 + b[6]

    def jpeg():
        shape = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return shape[0], shape[1]

    def unknown():
        return tf.constant(0, tf.int64), tf.constant(0, tf.int64)

    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, 8), _PNG_MAGIC),
        tf.equal(tf.strings.substr(head, 12, 4), b"IHDR"),
    )
    magic6 = tf.strings.substr(head, 0, 6)
    is_gif = tf.logical_or(
        tf.equal(magic6, b"GIF87a"), tf.equal(magic6, b"GIF89a")
    )
    return tf.cond(
        tf.io.is_jpeg(data),
        jpeg,
        lambda: tf.cond(is_png, png, lambda: tf.cond(is_gif, gif, unknown)),
    )


def _check(condition, message, tensor):
    """`tensor`, after asserting `condition` (InvalidArgumentError)."""
    check = tf.debugging.Assert(condition, [message], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(tensor)


def decode_image_bytes(
    data,
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS,
    min_side: int = image_io.MIN_SIDE,
    *,
    draft_size: int | None = None,
    draft_above: int | None = image_io.DEFAULT_DRAFT_ABOVE,
):
    """Decodes one encoded image file to RGB `uint8`, with TensorFlow ops.

    The in-graph counterpart of `keras_rmac.data.image_io.load_image` used
    by the exported `serving_default` signature; it runs in `tf.function`
    and in a SavedModel without Python. JPEG, PNG, GIF, BMP and WebP are
    decoded as `load_image` decodes them (see the module docstring for the
    exact rules and the few differences).

    Args:
        data: scalar string tensor. The bytes of an image file.
        max_pixels: int. Largest accepted width x height the image is
            decoded to; JPEG, PNG and GIF are checked on the header, before
            decoding. Defaults to `image_io.DEFAULT_MAX_PIXELS`.
        min_side: int. Smallest accepted width or height. Defaults to
            `image_io.MIN_SIDE`.
        draft_size: int or None. As in `load_image`: the longest side the
            image will be resized to; None decodes at full size. Defaults
            to `None`.
        draft_above: int or None. As in `load_image`: declared pixels above
            which a JPEG is decoded at reduced scale. Defaults to
            `image_io.DEFAULT_DRAFT_ABOVE`.

    Returns:
        `uint8` tensor `(H, W, 3)`.

    Raises:
        tf.errors.InvalidArgumentError: the bytes are empty, not an image,
            corrupt or truncated, or the image is too small or too large
            (when run eagerly; in a graph the error comes from the run).

    Example:

    >>> png = tf.io.encode_png(tf.zeros((10, 20, 3), tf.uint8))
    >>> decode_image_bytes(png).shape
    TensorShape([10, 20, 3])
    """
    draft_size, draft_above = pixel_limits.check_draft_options(
        draft_size, draft_above
    )
    data = tf.convert_to_tensor(data, tf.string)
    declared_h, declared_w = _declared_size(data)
    is_jpeg = tf.io.is_jpeg(data)
    # JPEG: reduced decoding above `draft_above`, as image_io.load_image.
    scale = tf.cond(
        is_jpeg,
        lambda: _jpeg_scale(declared_h, declared_w, draft_size, draft_above),
        lambda: tf.constant(1, tf.int32),
    )
    s = tf.cast(scale, tf.int64)
    decoded_h, decoded_w = -(-declared_h // s), -(-declared_w // s)
    # A progressive JPEG decoded reduced still holds the whole image's
    # coefficients: its declared size counts.
    whole = tf.cond(
        scale > 1, lambda: _jpeg_progressive(data), lambda: tf.constant(False)
    )
    pixels = tf.where(whole, declared_h * declared_w, decoded_h * decoded_w)
    reduced = tf.where(
        scale > 1,
        tf.strings.format(
            " (decoded at scale 1/{} to {}x{})", (scale, decoded_w, decoded_h)
        ),
        "",
    )
    data = _check(
        pixels <= max_pixels,
        tf.strings.join(
            [
                tf.strings.format(
                    "image too large: header declares {}x{} pixels",
                    (declared_w, declared_h),
                ),
                reduced,
                ", more than max_pixels=" + str(max_pixels) + " (possible "
                "decompression bomb); export with a larger max_pixels if "
                "it is genuine",
            ]
        ),
        data,
    )
    is_png = tf.equal(tf.strings.substr(data, 0, 8), _PNG_MAGIC)
    image = tf.cond(
        is_jpeg,
        lambda: _decode_jpeg(data, scale),
        lambda: tf.cond(
            is_png, lambda: _decode_png(data), lambda: _decode_other(data)
        ),
    )
    image.set_shape([None, None, 3])
    shape = tf.shape(image, out_type=tf.int64)
    height, width = shape[0], shape[1]
    image = _check(
        tf.minimum(height, width) >= min_side,
        tf.strings.format(
            "image too small ({}x{}); need at least "
            f"{min_side}x{min_side} pixels",
            (width, height),
        ),
        image,
    )
    return _check(
        height * width <= max_pixels,
        tf.strings.format(
            "image too large: decoded size {}x{} exceeds max_pixels="
            + str(max_pixels),
            (width, height),
        ),
        image,
    )
