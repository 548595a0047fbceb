"""Cluttered COIL-100 on disk: generation, the protocol, box metrics.

The parts of `benchmarks/cluttered_coil.py` that define no command-line
flags, so that tests (and other benchmarks, e.g. an RPN training) can
import them: `generate` writes the data set, `load_protocol` reads it back
as the COIL-100 protocol, `box_iou` / `grid_boxes` / `recall_at` score
boxes. The data README is the docstring of `benchmarks/cluttered_coil.py`.
"""

import functools
import json
import os
import pathlib

import numpy as np

from benchmarks import cluttered_coil_data as clutter

CONFIG = clutter.ClutterConfig()
"""The committed generation parameters."""

PHOTO_SHORT_SIDE = 1024
"""Background photos are first reduced to this shorter side."""

JPEG_QUALITY = 95


@functools.lru_cache(maxsize=512)
def coil_view(coil_dir, name, threshold=CONFIG.mask_threshold):
    """A COIL view (RGB uint8) and its object mask."""
    from PIL import Image

    view = np.asarray(Image.open(pathlib.Path(coil_dir) / name).convert("RGB"))
    return view, clutter.object_mask(view, threshold)


def generation_manifest(config):
    """What `generate` records and compares to skip finished work."""
    return {
        "config": {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in vars(config).items()
        },
        "photo_short_side": PHOTO_SHORT_SIDE,
        "jpeg_quality": JPEG_QUALITY,
    }


def generate(coil_dir, out, backgrounds, config=CONFIG, verbose=1) -> None:
    """Writes the images, lists, metadata and manifest under `out`.

    Args:
        coil_dir: path. The COIL-100 folder (`obj{N}__{deg}.png`).
        out: path. Output folder.
        backgrounds: `{split: (photos, rows)}` as `load_backgrounds`
            returns: RGB uint8 photos and their manifest rows.
        config: `ClutterConfig`. Defaults to the committed `CONFIG`.
        verbose: int. Progress lines when not 0. Defaults to 1.

    Skips the work when `out/manifest.json` records the same parameters.
    """
    from PIL import Image

    from keras_rmac import fileio
    from keras_rmac.data.labelled import LabelledImages
    from keras_rmac.data.labelled import write_image_list
    from keras_rmac.progress import progress_bar

    coil_dir, out = str(coil_dir), pathlib.Path(out)
    manifest_path = out / "manifest.json"
    expected = generation_manifest(config)
    if manifest_path.is_file():
        done = json.loads(manifest_path.read_text())
        if {k: done.get(k) for k in expected} == expected:
            return
    views = clutter.split_views(os.listdir(coil_dir))
    metadata = []
    manifest = dict(expected, backgrounds={})
    for split in clutter.SPLITS:
        photos, rows = backgrounds[split]
        tiles = clutter.photo_tiles(photos, config.tiles_per_side)
        step = clutter.VIEW_STEP_DEGREES[split]
        slots = {}
        manifest["backgrounds"][split] = rows
        folder = out / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        paths, labels, boxes = [], [], []
        bar = progress_bar(
            len(views[split]), verbose, unit_name="image", label=split
        )
        for obj, deg, name in views[split]:
            rng = clutter.image_rng(config.seed, split, obj, deg)
            other = clutter.occluding_object(views[split], obj, rng)
            other_view = (
                None
                if other is None
                else coil_view(coil_dir, other[2], config.mask_threshold)
            )
            view, mask = coil_view(coil_dir, name, config.mask_threshold)
            if obj not in slots:
                slots[obj] = clutter.object_tiles(
                    len(tiles), 360 // step, config.seed, split, obj
                )
            tile = tiles[slots[obj][deg // step]]
            result = clutter.composite(
                view, mask, photos, rng, config, other_view, tile
            )
            path = folder / name.replace(".png", ".jpg")
            with fileio.atomic_write(path) as f:
                Image.fromarray(result.image).save(
                    f, format="JPEG", quality=JPEG_QUALITY
                )
            paths.append(str(path))
            labels.append(obj)
            boxes.append(result.box)
            if bar is not None:
                bar.add(1)
            if other is not None and result.info["occluder"] == "object":
                result.info["occluder_view"] = other[2]
            metadata.append(
                {"split": split, "image": name, "box": result.box} | result.info
            )
        listed = LabelledImages.from_labels(paths, labels, np.array(boxes))
        write_image_list(out / f"{split}_boxes.csv", listed)
        if split == "train":
            listed.boxes = None
            write_image_list(out / "train.csv", listed)
    fileio.atomic_write_text(
        out / "metadata.jsonl",
        "".join(json.dumps(m) + "\n" for m in metadata),
    )
    fileio.atomic_write_json(manifest_path, manifest)


def load_protocol(out, split="test"):
    """`(train LabelledImages with true boxes, RetrievalDataset)`.

    `split="test"`: train = objects 1-50, the test protocol on 51-100.
    `split="val"`: train = objects 1-40, database = objects 41-50 every 15
    degrees, queries at 0/90/180/270 degrees.
    """
    from keras_rmac.data.datasets import RetrievalDataset
    from keras_rmac.data.labelled import read_image_list

    out = pathlib.Path(out)
    train = read_image_list(out / "train_boxes.csv")
    objects = np.array([int(n) for n in train.label_names()])
    if split == "test":
        db = read_image_list(out / "test_boxes.csv")
        fit = train
        query_degrees = (0,)
    elif split == "val":
        keep = objects <= max(clutter.VAL_OBJECTS) - len(clutter.VAL_OBJECTS)
        fit = train.subset(np.flatnonzero(keep))
        degrees = np.array([view_degrees(p) for p in train.paths])
        db = train.subset(
            np.flatnonzero(~keep & (degrees % clutter.TEST_STEP_DEGREES == 0))
        )
        query_degrees = (0, 90, 180, 270)
    else:
        raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
    labels = np.array([int(n) for n in db.label_names()])
    queries = [
        i for i, p in enumerate(db.paths) if view_degrees(p) in query_degrees
    ]
    gnd = []
    for q in queries:
        same = np.flatnonzero(labels == labels[q])
        gnd.append({"ok": same[same != q], "junk": np.array([q])})
    dataset = RetrievalDataset(
        db_paths=db.paths,
        query_paths=[db.paths[q] for q in queries],
        query_boxes=None,
        gnd=gnd,
        name=f"cluttered_coil100_{split}",
        db_labels=labels,
        train_paths=fit.paths,
        train_labels=np.array([int(n) for n in fit.label_names()]),
        query_db_indices=np.array(queries),
    )
    return fit, dataset, db.boxes


def view_degrees(path):
    name = os.path.basename(path).replace(".jpg", ".png")
    return clutter.parse_view(name)[1]


def box_iou(a, b):
    """IoU of `(N, 4)` boxes `a` with `(M, 4)` boxes `b`, `(x0, y0, x1,
    y1)` with exclusive ends (areas `(x1 - x0) * (y1 - y0)`): `(N, M)`."""
    a = np.asarray(a, np.float64).reshape(-1, 1, 4)
    b = np.asarray(b, np.float64).reshape(1, -1, 4)
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)

    def area(x):
        return (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])

    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def grid_boxes(map_height, map_width, image_height, image_width, levels):
    """`RegionProposal(levels)` regions of a feature map, in image pixels
    `(x0, y0, x1, y1)`: a cell spans `image / map` pixels per axis."""
    from keras_rmac.layers import RegionProposal

    cells = np.asarray(
        RegionProposal(levels=levels)(np.zeros((1, map_height, map_width, 1)))
    ).astype(np.float64)
    sx, sy = image_width / map_width, image_height / map_height
    x, y, w, h = cells.T
    return np.stack([x * sx, y * sy, (x + w) * sx, (y + h) * sy], axis=1)


def recall_at(proposals, true_boxes, n, threshold=0.5):
    """Share of images whose true box has IoU >= `threshold` with one of
    the first `n` proposals (the same proposals for every image)."""
    best = box_iou(true_boxes, proposals[:n]).max(axis=1)
    return float((best >= threshold).mean()), float(best.mean())
