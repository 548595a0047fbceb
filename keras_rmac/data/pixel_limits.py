"""The memory guard of decoding: pixel limits and reduced JPEG decoding.

What decoding costs in memory is the size an image is decoded to, not the
size its header declares: Pillow holds 4 bytes per decoded pixel, the RGB
array 3 more, and `RMACModel.extract` converts it to float32 (12 more)
before resizing. A JPEG, though, can be decoded at a reduced scale: libjpeg
scales the DCT by 1/2, 1/4 or 1/8 while it decodes (Pillow's
`Image.draft`, TensorFlow's `tf.io.decode_jpeg(ratio=...)`, pixel for pixel
the same), so a 200-megapixel photo that will be resized to 512 pixels is
decoded to 2040x1530 pixels, never to 16320x12240.

The rules, shared by `keras_rmac.data.image_io.load_image` and the exported
serving graph (`keras_rmac.export.decode`):

- Reduced decoding (`jpeg_scale`): a JPEG whose declared width x height is
  above `draft_above` pixels, when the caller says which longest side it
  needs (`draft_size`, the largest size it resizes to), is decoded at the
  largest reduction 1/s, s in (8, 4, 2), with
  `longest >= DRAFT_MARGIN * s * draft_size`: the decoded image is at
  least twice the size the resize needs, so the antialiased resize still
  does the last 2x or more of the downsampling. Without that margin
  (decoding straight to the target size) descriptors move much more
  (`benchmarks/big_photos.py`: mean cosine 0.992 to the whole decode, vs
  0.9999 with the margin, less than JPEG compression itself changes). Reduced
  decoding changes descriptors slightly (it is a different downsampling),
  so it is used only above `draft_above`; an index records that threshold
  so that updates never mix two decodings.
- The pixel limit (`too_large`): `max_pixels` bounds the pixels an image is
  decoded to, checked on the header before any pixel is decoded: the
  reduced size of a JPEG decoded at reduced scale, the declared size of
  every other image. Progressive JPEGs are the exception: libjpeg keeps
  the whole image's DCT coefficients in memory (2 bytes per coefficient,
  about 3 bytes per declared pixel at 4:2:0 chroma subsampling, as much as
  a whole RGB decode), so they are held to `max_pixels` on their declared
  size even when decoded reduced. (Sequential JPEGs whose colour
  components come in separate scans, which phone cameras do not write,
  buffer coefficients the same way and are not detected: they are checked
  on their reduced size.)
"""

DEFAULT_MAX_PIXELS = 100_000_000
"""Default limit on the pixels an image is decoded to (100 megapixels).

It is the decompression-bomb guard for images that must be decoded whole
(PNG, GIF, BMP, WebP, TIFF, progressive JPEG, any JPEG when no resize is
asked for): a few-kilobyte PNG can declare any size, and decoding 100 MP
already costs about 2 GB in `RMACModel.extract` (400 MB in Pillow, 300 MB
as an RGB array, then 1.2 GB as float32 for the resize). 100 MP sits
between Pillow's warning level (`PIL.Image.MAX_IMAGE_PIXELS`, about
89.5 MP) and its hard error at twice that (about 179 MP, where a whole
decode would cost over 2 GB per image, times the decoding threads); it is
the value of keras_rmac 0.2.0, so every image accepted before is still
accepted. Large phone photos (108 and 200 MP JPEGs) are not refused by it
any more: they are decoded at reduced scale (see `DEFAULT_DRAFT_ABOVE`),
and only that reduced size counts.
"""

DEFAULT_DRAFT_ABOVE = 100_000_000
"""Default declared size above which JPEGs are decoded at reduced scale.

Equal to the 0.2.0 pixel limit on purpose: every image that 0.2.0 accepted
(at most 100 MP declared) is decoded exactly as before, so descriptors of
existing indexes and of exported models do not change, and only images
that used to be refused (108 and 200 MP phone photos) are decoded reduced.
Reduced decoding of such a photo changes its descriptor slightly (measured
by `benchmarks/big_photos.py` on upsampled COIL-100 photos: mean cosine
0.9999 to the whole decode, less than JPEG compression itself changes) and
bounds its memory to that of a small image (106 MB of peak RSS for a
200 MP photo at `max_size=512`, against 4 GB to decode 108 MP whole).
"""

JPEG_SCALES = (8, 4, 2)
"""The DCT reductions libjpeg offers (1/8, 1/4, 1/2), largest first."""

DRAFT_MARGIN = 2
"""A reduced decode keeps its longest side >= DRAFT_MARGIN * draft_size."""


def _check(name, value, minimum, allow_none):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            value = int(value.__index__())
        except (AttributeError, TypeError):
            raise TypeError(
                f"`{name}` must be an int >= {minimum}"
                + (" or None" if allow_none else "")
                + f". Received: {name}={value!r}"
            ) from None
    if value < minimum:
        raise ValueError(
            f"`{name}` must be an int >= {minimum}"
            + (" or None" if allow_none else "")
            + f". Received: {name}={value}"
        )
    return int(value)


def check_draft_options(draft_size, draft_above):
    """`(draft_size, draft_above)` validated: ints >= 1 or None."""
    return (
        _check("draft_size", draft_size, 1, True),
        _check("draft_above", draft_above, 0, True),
    )


def jpeg_scale(width: int, height: int, draft_size, draft_above) -> int:
    """The DCT reduction (1, 2, 4 or 8) a JPEG of this declared size gets.

    Args:
        width: int. Declared width.
        height: int. Declared height.
        draft_size: int or None. Longest side the caller resizes to (the
            decoded longest side stays at least `DRAFT_MARGIN` times
            that); None decodes at full size.
        draft_above: int or None. Declared width x height above which
            reduced decoding is used; None never uses it.

    Returns:
        int `s`: the image is decoded to `ceil(width / s)` x
        `ceil(height / s)` pixels.

    Example:

    >>> jpeg_scale(16320, 12240, 512, 100_000_000)
    8
    >>> jpeg_scale(4000, 3000, 512, 100_000_000)  # below the threshold
    1
    >>> jpeg_scale(4000, 3000, 512, 0)  # 1000 would be < 2 * 512
    2
    """
    if draft_size is None or draft_above is None:
        return 1
    if width * height <= draft_above:
        return 1
    longest, shortest = max(width, height), min(width, height)
    for s in JPEG_SCALES:
        if longest >= DRAFT_MARGIN * s * draft_size and shortest >= s:
            return s
    return 1


def reduced_size(width: int, height: int, scale: int) -> tuple[int, int]:
    """`(ceil(width / scale), ceil(height / scale))`, libjpeg's output."""
    return -(-width // scale), -(-height // scale)


def too_large(
    width, height, decoded, max_pixels, progressive=False
) -> str | None:
    """Why an image must not be decoded (None when it may).

    Args:
        width: int. Declared width.
        height: int. Declared height.
        decoded: `(width, height)` it would be decoded to.
        max_pixels: int. The limit.
        progressive: bool. A progressive JPEG (checked on its declared size
            whatever `decoded` is).

    Returns:
        The reason, naming the sizes and how to raise the limit, or None.
    """
    raise_it = (
        "; if the image is genuine, raise the limit (`max_pixels=` in "
        "Python, `--max-pixels` on the command line)"
    )
    if width * height > max_pixels and (
        progressive or decoded == (width, height)
    ):
        why = (
            " (a progressive JPEG: its decoder holds the whole image)"
            if progressive and decoded != (width, height)
            else " (possible decompression bomb)"
        )
        return (
            f"image too large: declared {width}x{height} pixels exceeds "
            f"max_pixels={max_pixels:,}: {width * height:,} pixels{why}"
            + raise_it
        )
    if decoded[0] * decoded[1] > max_pixels:
        return (
            f"image too large: declared {width}x{height} pixels, decoded "
            f"at reduced scale to {decoded[0]}x{decoded[1]} = "
            f"{decoded[0] * decoded[1]:,} pixels, still exceeds "
            f"max_pixels={max_pixels:,}" + raise_it
        )
    return None
