"""Cluttered COIL-100: the generator behind `benchmarks/cluttered_coil.py`.

NumPy + OpenCV only (no TensorFlow), so that the tests and the generation
run without the model stack. Three steps:

1. `object_mask`: a COIL-100 view's object cut from its dark turntable
   background (threshold on the brightest channel, morphological opening
   and closing, small components dropped, holes filled).
2. `composite`: the object, rescaled, pasted at a random position onto a
   random crop of a background photo, optionally partly hidden by an
   occluder (a patch of another background photo, or another object of the
   same split). The true box is the extent of the object's *visible*
   pixels after occlusion, `(x0, y0, x1, y1)` with exclusive ends, as
   `keras-rmac clean` writes boxes (`image[y0:y1, x0:x1]` holds them).
3. `split_views`: the COIL-100 protocol's objects and views per split.

Every random choice of one image comes from a generator seeded with
`(seed, split, object, angle)`, so one image is reproducible on its own
and the images do not depend on the order they are made in.
"""

import dataclasses
import re

import cv2
import numpy as np

TRAIN_OBJECTS = range(1, 51)
"""COIL-100 protocol: training objects (all 72 views)."""

VAL_OBJECTS = range(41, 51)
"""Validation objects, a part of the training objects (as
`benchmarks/train_coil100.py --split val`)."""

TEST_OBJECTS = range(51, 101)
"""Test objects: database = views at multiples of 15 degrees."""

TEST_STEP_DEGREES = 15
VIEW_STEP_DEGREES = {"train": 5, "test": TEST_STEP_DEGREES}
"""Angle between the views of a split: an object's background tiles are
assigned per angle slot `degrees // step`."""
SPLITS = ("train", "test")
_SPLIT_ID = {"train": 1, "test": 2}
_COIL_NAME = re.compile(r"^obj(\d+)__(\d+)\.png$")

OCCLUDERS = ("none", "patch", "object")


@dataclasses.dataclass(frozen=True)
class ClutterConfig:
    """The generation parameters, fixed before any training on the data.

    Args:
        image_size: int. Side of the square output images.
        mask_threshold: int. A COIL pixel is object when its brightest
            channel exceeds this (the turntable background is ~25).
        object_scale: (float, float). Range of the visible object's longest
            side (before occlusion) as a fraction of `image_size`.
        tiles_per_side: int. Each photo is cut into square tiles of side
            `shorter side // tiles_per_side`; an image's background is a
            crop inside one tile, and no tile serves twice for one object.
        tile_crop: (float, float). Range of the background crop's side as
            a fraction of the tile's side.
        crop_fraction: (float, float). Range of a patch occluder's source
            crop as a fraction of the photo's shorter side.
        occluder_weights: (float, float, float). Probabilities of no
            occluder, a background patch, another object.
        occluded_fraction: (float, float). Range of the object's bounding
            box depth (along one axis) that an occluder covers.
        min_visible: float. Smallest share of the object's pixels left
            visible by an occluder (else the occluder is drawn again).
        max_visible: float. An occluder must hide at least
            `1 - max_visible` of the object's pixels.
        occluder_tries: int. Draws of an occluder before giving up (the
            image then has none; recorded in the metadata).
        seed: int. Base seed.
    """

    image_size: int = 256
    mask_threshold: int = 40
    object_scale: tuple = (0.3, 0.65)
    tiles_per_side: int = 3
    tile_crop: tuple = (0.7, 1.0)
    crop_fraction: tuple = (0.25, 0.6)
    occluder_weights: tuple = (0.4, 0.3, 0.3)
    occluded_fraction: tuple = (0.2, 0.5)
    min_visible: float = 0.5
    max_visible: float = 0.95
    occluder_tries: int = 20
    seed: int = 15


# ---------------------------------------------------------------------------
# Object masks.


def object_mask(view: np.ndarray, threshold: int = 40) -> np.ndarray:
    """The object's pixels of a COIL-100 view, as a boolean `(H, W)` mask.

    The brightest channel above `threshold`, then a 3x3 opening (sensor
    specks), a 5x5 closing (thin dark gaps), connected components smaller
    than a tenth of the largest dropped, and holes (background pixels not
    connected to the border) filled, so that dark parts inside an object
    stay opaque.

    Args:
        view: uint8 `(H, W, 3)` RGB image.
        threshold: int. Brightness threshold. Defaults to 40.

    Returns:
        bool `(H, W)`; all False when nothing exceeds the threshold.
    """
    if view.ndim != 3 or view.shape[-1] != 3:
        raise ValueError(f"Expected an (H, W, 3) RGB view, got {view.shape}.")
    mask = (view.max(axis=-1) > threshold).astype(np.uint8)
    # Zero padding: OpenCV's default border would let the closing grow
    # objects near the image border onto it.
    mask = np.pad(mask, 3)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    mask = np.ascontiguousarray(mask[3:-3, 3:-3])
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, 8)
    if count <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= areas.max() / 10)
    mask = np.isin(labels, keep)
    return _fill_holes(mask)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """`mask` plus the background pixels not 4-connected to the border."""
    background = (~mask).astype(np.uint8)
    padded = np.pad(background, 1, constant_values=1)
    _, labels = cv2.connectedComponents(padded, connectivity=4)
    outside = labels == labels[0, 0]
    return mask | ~outside[1:-1, 1:-1]


def mask_box(mask: np.ndarray):
    """`(x0, y0, x1, y1)` extent of a mask's True pixels (exclusive ends),
    or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


# ---------------------------------------------------------------------------
# Compositing.


@dataclasses.dataclass
class Composite:
    """One generated image and what is known about it.

    Args:
        image: uint8 `(S, S, 3)` RGB.
        visible: bool `(S, S)`, the object's pixels left visible.
        box: `(x0, y0, x1, y1)`, the extent of `visible` (exclusive ends).
        info: dict of the random choices (JSON-serialisable).
    """

    image: np.ndarray
    visible: np.ndarray
    box: tuple
    info: dict


def _resize(array, size):
    """`cv2.resize` to `(width, height)`, area for shrinking."""
    shrink = size[0] < array.shape[1] or size[1] < array.shape[0]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(array, size, interpolation=method)


def background_crop(photo, rng, config, region=None, fraction=None):
    """A random square crop of `photo` (inside `region` when given),
    flipped half the time, resized to `image_size`.

    Args:
        photo: uint8 `(H, W, 3)`.
        rng: `numpy.random.Generator`.
        config: `ClutterConfig`.
        region: `(x, y, side)` square to crop inside, or None for the
            whole photo. Defaults to None.
        fraction: (float, float). Range of the crop's side as a fraction
            of the region's side (or of the photo's shorter side).
            Defaults to `config.tile_crop`.

    Returns:
        `(uint8 image, info dict)`.
    """
    h, w = photo.shape[:2]
    rx, ry, rside = (0, 0, min(h, w)) if region is None else region
    rw, rh = (w, h) if region is None else (rside, rside)
    fraction = config.tile_crop if fraction is None else fraction
    side = max(8, int(rside * rng.uniform(*fraction)))
    y = ry + int(rng.integers(0, rh - side + 1))
    x = rx + int(rng.integers(0, rw - side + 1))
    crop = photo[y : y + side, x : x + side]
    flip = bool(rng.random() < 0.5)
    if flip:
        crop = crop[:, ::-1]
    size = (config.image_size, config.image_size)
    image = _resize(np.ascontiguousarray(crop), size)
    return image, {"crop": [x, y, side], "flip": flip}


def photo_tiles(photos, tiles_per_side):
    """The square background tiles of the photos, in order.

    Returns:
        list of `(photo index, x, y, side)`: a grid of squares of side
        `min(H, W) // tiles_per_side`, centred on each photo.
    """
    tiles = []
    for index, photo in enumerate(photos):
        h, w = photo.shape[:2]
        side = min(h, w) // tiles_per_side
        if side < 8:
            raise ValueError(
                f"Background photo {index} ({w}x{h}) is too small for "
                f"{tiles_per_side} tiles per side; use larger photos."
            )
        nx, ny = w // side, h // side
        x0, y0 = (w - nx * side) // 2, (h - ny * side) // 2
        tiles.extend(
            (index, x0 + i * side, y0 + j * side, side)
            for j in range(ny)
            for i in range(nx)
        )
    return tiles


def object_tiles(num_tiles, views, seed, split, obj):
    """Tile index of each of an object's `views` (a distinct one each),
    from a permutation seeded with `(seed, split, object)`."""
    if views > num_tiles:
        raise ValueError(
            f"{views} views of object {obj} but only {num_tiles} background "
            "tiles: add photos or raise tiles_per_side."
        )
    rng = np.random.default_rng([seed, _SPLIT_ID[split], obj, 1_000_000])
    return rng.permutation(num_tiles)[:views]


def scaled_object(view, mask, longest):
    """The object cut to its mask's box and resized so that its longest
    side is `longest` pixels: `(rgb uint8, alpha float32 in [0, 1])`."""
    x0, y0, x1, y1 = mask_box(mask)
    factor = longest / max(x1 - x0, y1 - y0)
    size = (
        max(1, round((x1 - x0) * factor)),
        max(1, round((y1 - y0) * factor)),
    )
    rgb = _resize(np.ascontiguousarray(view[y0:y1, x0:x1]), size)
    alpha = _resize(mask[y0:y1, x0:x1].astype(np.float32), size)
    # Hard outside, soft inside: pixels below one half are not object, so
    # the box (alpha >= 0.5) holds every pixel the object changes.
    alpha = np.where(alpha >= 0.5, alpha, 0.0).astype(np.float32)
    if not alpha.any():  # a one-pixel object shrunk away: keep its centre
        alpha[size[1] // 2, size[0] // 2] = 1.0
    return rgb, alpha


def _paste(canvas, rgb, alpha, x, y):
    """Alpha-blends `rgb` into `canvas` (float32, in place) at `(x, y)`;
    returns the full-canvas boolean mask of the pasted pixels."""
    h, w = alpha.shape
    region = canvas[y : y + h, x : x + w]
    a = alpha[..., None]
    region[...] = a * rgb + (1.0 - a) * region
    full = np.zeros(canvas.shape[:2], bool)
    full[y : y + h, x : x + w] = alpha > 0
    return full


def _draw_occluder(kind, rng, box, shape, config, occluder_object):
    """An occluder of `kind` next to the object's `box`: `(x, y, w, h)`
    placement and, for objects, their `(rgb, alpha)`."""
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    side = int(rng.integers(4))  # 0 left, 1 right, 2 top, 3 bottom
    depth = rng.uniform(*config.occluded_fraction)
    if kind == "object":
        rgb, alpha = occluder_object
        h, w = alpha.shape
    else:
        # A rectangle reaching `depth` into the box, sticking out beyond it.
        into = depth + rng.uniform(0.1, 0.6)
        along = rng.uniform(0.6, 1.6)
        if side < 2:
            w, h = round(bw * into), round(bh * along)
        else:
            w, h = round(bw * along), round(bh * into)
        w, h = max(4, int(w)), max(4, int(h))
        rgb = alpha = None
    # The occluder's inner edge reaches `depth` into the box from `side`;
    # along the other axis it is centred near the box's centre.
    cx = (x0 + x1) / 2 + rng.uniform(-0.3, 0.3) * bw
    cy = (y0 + y1) / 2 + rng.uniform(-0.3, 0.3) * bh
    if side == 0:
        x, y = x0 + bw * depth - w, cy - h / 2
    elif side == 1:
        x, y = x1 - bw * depth, cy - h / 2
    elif side == 2:
        x, y = cx - w / 2, y0 + bh * depth - h
    else:
        x, y = cx - w / 2, y1 - bh * depth
    return int(round(x)), int(round(y)), w, h, rgb, alpha


def _clip_paste(canvas, rgb, alpha, x, y):
    """`_paste` of the part of `(rgb, alpha)` inside the canvas."""
    h, w = alpha.shape
    sx0, sy0 = max(0, -x), max(0, -y)
    sx1 = min(w, canvas.shape[1] - x)
    sy1 = min(h, canvas.shape[0] - y)
    if sx1 <= sx0 or sy1 <= sy0:
        return np.zeros(canvas.shape[:2], bool)
    return _paste(
        canvas,
        rgb[sy0:sy1, sx0:sx1],
        alpha[sy0:sy1, sx0:sx1],
        x + sx0,
        y + sy0,
    )


def composite(view, mask, photos, rng, config, other=None, tile=None):
    """Pastes one COIL-100 object onto a background photo crop.

    Args:
        view: uint8 `(H, W, 3)` COIL view.
        mask: bool `(H, W)` its `object_mask`.
        photos: list of uint8 RGB photos of this split; the first one
            holding `tile` (or, without `tile`, a random one) gives the
            background, another one the patch occluders.
        rng: `numpy.random.Generator`.
        config: `ClutterConfig`.
        other: `(view, mask)` of another object of the same split, for the
            "object" occluder, or None (then only patches occlude).

    Returns:
        `Composite`.
    """
    if not mask.any():
        raise ValueError("The object's mask is empty; nothing to paste.")
    size = config.image_size
    if tile is None:
        index, region = int(rng.integers(len(photos))), None
    else:
        index, region = int(tile[0]), tuple(int(v) for v in tile[1:])
    background, bg_info = background_crop(photos[index], rng, config, region)
    longest = max(2, round(size * rng.uniform(*config.object_scale)))
    rgb, alpha = scaled_object(view, mask, longest)
    h, w = alpha.shape
    x = int(rng.integers(0, size - w + 1))
    y = int(rng.integers(0, size - h + 1))
    canvas = background.astype(np.float32)
    pasted = _paste(canvas, rgb.astype(np.float32), alpha, x, y)
    info = {
        "background": index,
        **bg_info,
        "object_xywh": [x, y, w, h],
        "occluder": "none",
    }
    weights = np.asarray(config.occluder_weights, float)
    if other is None:
        weights[2] = 0.0
    kind = OCCLUDERS[int(rng.choice(3, p=weights / weights.sum()))]
    visible = pasted
    if kind != "none":
        visible, occluder_info = _occlude(
            canvas, pasted, kind, photos, index, rng, config, other
        )
        info.update(occluder_info)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    info["visible_fraction"] = float(visible.sum() / pasted.sum())
    return Composite(image, visible, mask_box(visible), info)


def _occlude(canvas, pasted, kind, photos, background, rng, config, other):
    """Draws occluders until one leaves `[min_visible, max_visible]` of
    the object visible, pastes it; returns `(visible mask, info)`."""
    box = mask_box(pasted)
    total = pasted.sum()
    occluder_object = None
    if kind == "object":
        longest = max(
            2, round(config.image_size * rng.uniform(*config.object_scale))
        )
        rgb, alpha = scaled_object(other[0], other[1], longest)
        # Opaque: no pixel of the hidden object shows through its edge.
        occluder_object = rgb, (alpha > 0).astype(np.float32)
    else:
        choices = [i for i in range(len(photos)) if i != background]
        source = (
            photos[choices[int(rng.integers(len(choices)))]]
            if (choices)
            else photos[background]
        )
    for attempt in range(config.occluder_tries):
        x, y, w, h, rgb, alpha = _draw_occluder(
            kind, rng, box, canvas.shape, config, occluder_object
        )
        if kind == "patch":
            patch, _ = background_crop(
                source,
                rng,
                dataclasses.replace(config, image_size=64),
                fraction=config.crop_fraction,
            )
            rgb = _resize(patch, (w, h)).astype(np.float32)
            alpha = np.ones((h, w), np.float32)
        covered = _cover(canvas.shape[:2], alpha, x, y)
        share = (pasted & ~covered).sum() / total
        if config.min_visible <= share <= config.max_visible:
            _clip_paste(canvas, rgb.astype(np.float32), alpha, x, y)
            return pasted & ~covered, {
                "occluder": kind,
                "occluder_xywh": [x, y, w, h],
                "occluder_tries": attempt + 1,
            }
    return pasted, {"occluder": "none", "occluder_failed": kind}


def _cover(shape, alpha, x, y):
    """Full-canvas mask of the occluder's opaque pixels (alpha > 0)."""
    out = np.zeros(shape, bool)
    h, w = alpha.shape
    sx0, sy0 = max(0, -x), max(0, -y)
    sx1, sy1 = min(w, shape[1] - x), min(h, shape[0] - y)
    if sx1 > sx0 and sy1 > sy0:
        out[y + sy0 : y + sy1, x + sx0 : x + sx1] = alpha[sy0:sy1, sx0:sx1] > 0
    return out


# ---------------------------------------------------------------------------
# Splits and seeds.


def image_rng(seed: int, split: str, obj: int, degrees: int):
    """The generator of one image: independent of generation order."""
    if split not in _SPLIT_ID:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    return np.random.default_rng([seed, _SPLIT_ID[split], obj, degrees])


def parse_view(name: str):
    """`(object, degrees)` of a COIL file name `obj{N}__{deg}.png`, or
    None."""
    match = _COIL_NAME.match(name)
    return None if match is None else (int(match[1]), int(match[2]))


def split_views(names):
    """COIL-100 protocol views per split, from the folder's file names.

    Returns:
        `{"train": [(obj, deg, name)], "test": [...]}`: train = objects
        1-50, every view; test = objects 51-100, views at multiples of 15
        degrees; both sorted by (object, angle).
    """
    out = {"train": [], "test": []}
    for name in names:
        parsed = parse_view(name)
        if parsed is None:
            continue
        obj, deg = parsed
        if obj in TRAIN_OBJECTS:
            out["train"].append((obj, deg, name))
        elif obj in TEST_OBJECTS and deg % TEST_STEP_DEGREES == 0:
            out["test"].append((obj, deg, name))
    for views in out.values():
        views.sort()
    return out


def occluding_object(views, obj, rng):
    """Another object's view of the same split list (never `obj`)."""
    others = [v for v in views if v[0] != obj]
    if not others:
        return None
    return others[int(rng.integers(len(others)))]
