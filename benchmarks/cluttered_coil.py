"""Cluttered COIL-100: a retrieval benchmark where regions matter.

On COIL-100 every object sits centred on black, so any region scheme looks
alike. This script builds a cluttered variant (issue 15, item 4): each
COIL-100 view's object is cut from its black background with a mask,
rescaled, pasted at a random position onto a crop of a real background
photo, and half the time partly hidden by an occluder; the true box of
every image is known. It then measures what needs no learned proposals.

Data README
-----------

- Objects and split: the COIL-100 protocol (`../shared/data/README.md`).
  train = objects 1-50, all 72 views (3600 images); validation = objects
  41-50 (part of train; database every 15 degrees, queries at 0/90/180/270
  degrees, as `benchmarks/train_coil100.py --split val`); test = objects
  51-100 at multiples of 15 degrees (1200 images), queries = their
  0-degree views (50), positives = the other test views of the object,
  the query itself junk. One cluttered image per COIL view, named as the
  view (`obj{N}__{deg}.jpg`).
- Backgrounds: 26 photographs from two Debian bookworm packages,
  `lomiri-wallpapers-16.04` 20.04.0-2 (14 photos: every file of
  /usr/share/backgrounds except the abstract `umang_by_Abhishek_Mudgal`)
  and `mate-backgrounds` 1.26.0-1 (the 12 photos of
  /usr/share/backgrounds/mate/nature; the `abstract/` and `desktop/`
  pictures are not photos). Train and test use disjoint photos (13 each,
  `BACKGROUNDS`), checked by sha256. `--backgrounds_dir` is filled with
  `apt-get download` + `dpkg-deb -x` when the files are missing.
- Generation (`benchmarks/cluttered_coil_data.py`, parameters in
  `ClutterConfig`, seed 15): object mask = brightest channel > 40, opened
  3x3, closed 5x5, components under a tenth of the largest dropped, holes
  filled; the object's longest side is 30-65 % of the 256x256 image, at a
  uniform random position inside it. Background: each photo (shorter side
  first reduced to 1024) is cut into a grid of square tiles of a third of
  its shorter side (9-15 tiles per photo, 150+ per split); the images of
  one object take distinct tiles (a seeded permutation per object), so two
  images of the same object never share background pixels (as photos of
  one landmark share the landmark, not their surroundings), while images
  of different objects do reuse tiles (background as a distractor). The
  crop is a square of 70-100 % of the tile, flipped half the time.
  Occluder: none (40 %), a rectangle cut from another background photo
  (30 %) or another object of the same split, opaque (30 %), reaching
  20-50 % into the object's box from a random side and leaving 50-95 % of
  its pixels visible (else drawn again, 20 tries, then none). Each image
  has its own seed `(seed, split, object, angle)`.
- True boxes: the extent of the object's *visible* pixels after
  occlusion (alpha >= 0.5 after rescaling, minus the occluder), as
  `x0,y0,x1,y1` with exclusive ends, in the format `keras-rmac clean`
  writes (`image[y0:y1, x0:x1]`).
- `benchmarks/cluttered_coil_examples.jpg` (`--parts=sheet`): masks of
  16 objects (red outline) and 24 generated images with their true box.
- Files under `--out_dir`: `images/{train,test}/obj{N}__{deg}.jpg` (JPEG
  quality 95), `train.csv` (`path,label`: the input of `keras-rmac clean`),
  `train_boxes.csv` and `test_boxes.csv` (`path,label,x0,y0,x1,y1`, true
  boxes; label = object number), `metadata.jsonl` (every random choice per
  image), `manifest.json` (parameters, background files and sha256).
  `cluttered_coil_files.load_protocol(out_dir, "test" | "val")` reads
  them back as the training list (with true boxes), the
  `RetrievalDataset` of the protocol and the database's true boxes.

Measured (`--parts`, each writes its own RESULTS.md section):

- `clean`: `keras-rmac clean` on the cluttered training images of
  `--clean_objects`, its boxes against the true boxes (mean IoU, share
  with IoU >= 0.5, kept rows);
- `recall`: proposal recall at IoU >= 0.5 of the rigid R-MAC grid
  (`RegionProposal`'s regions mapped to pixels) on the test split;
- `retrieval`: off-the-shelf R-MAC mAP (MobileNetV2, shared weights,
  shift + PCA-whitening learned on the train split) on the cluttered test
  protocol and on plain COIL-100, computed the same way.

Usage:
    python -m benchmarks.cluttered_coil --parts=generate,sheet
    python -m benchmarks.cluttered_coil --parts=clean --clean_objects=1-10
    python -m benchmarks.cluttered_coil --parts=recall,retrieval
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import cluttered_coil_data as clutter  # noqa: E402
from benchmarks import cluttered_coil_files as files  # noqa: E402
from benchmarks.cluttered_coil_files import CONFIG  # noqa: E402
from benchmarks.cluttered_coil_files import PHOTO_SHORT_SIDE  # noqa: E402
from benchmarks.cluttered_coil_files import box_iou  # noqa: E402
from benchmarks.cluttered_coil_files import generate  # noqa: E402
from benchmarks.cluttered_coil_files import grid_boxes  # noqa: E402
from benchmarks.cluttered_coil_files import load_protocol  # noqa: E402
from benchmarks.cluttered_coil_files import recall_at  # noqa: E402
from benchmarks.results import define_data_dir  # noqa: E402
from benchmarks.results import machine  # noqa: E402
from benchmarks.results import markdown_table  # noqa: E402
from benchmarks.results import write_section  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
WEIGHTS = "weights/mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
EXAMPLES = HERE / "cluttered_coil_examples.jpg"

LOMIRI = ("lomiri-wallpapers-16.04", "20.04.0-2", "usr/share/backgrounds")
MATE = ("mate-backgrounds", "1.26.0-1", "usr/share/backgrounds/mate/nature")
# (package, file, first 16 hex digits of its sha256, split)
BACKGROUNDS = [
    (LOMIRI, "Bridge_by_Sander_Klootwijk.jpg", "bd86b081f9975e2b", "train"),
    (LOMIRI, "Dragonfly_by_Bolly.jpg", "af5af17841009732", "test"),
    (LOMIRI, "Picture_0B_by_freespace.jpg", "c8c0ab18e48d9e04", "train"),
    (LOMIRI, "Picture_1A_by_freespace.jpg", "89e86af38d04daae", "test"),
    (LOMIRI, "Wine_by_Jakkub_Mede.jpg", "d2e96e6d4da40dd8", "train"),
    (LOMIRI, "aitzgorri_by_Aitzol_Berasategi.jpg", "66268e7b48f8854d", "test"),
    (LOMIRI, "analogpattern_by_Peter_Nerlich.jpg", "15372488a192b2be", "train"),
    (LOMIRI, "free_by_Peter_Nerlich.jpg", "85a5453c2fed514c", "test"),
    (LOMIRI, "friends_by_Aitzol_Berasategi.jpg", "cc40e313c74e421e", "train"),
    (LOMIRI, "greentock_by_Peter_Nerlich.jpg", "e7b20e2db9dcd6e2", "test"),
    (LOMIRI, "life_by_Aitzol_Berasategi.jpg", "4c119350ead80201", "train"),
    (
        LOMIRI,
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "414d0072b2f6f2c5",
        "test",
    ),
    (LOMIRI, "seeding_by_Clements_Engelhardt.jpg", "a5634d1ab5e41a35", "train"),
    (LOMIRI, "sunset_by_Aitzol_Berasategi.jpg", "474dab6a4b9f94dc", "test"),
    (MATE, "Aqua.jpg", "5c30118205982da4", "train"),
    (MATE, "Blinds.jpg", "f7aac0dcc2e06d04", "test"),
    (MATE, "Dune.jpg", "8a67c2cb0be8c46b", "train"),
    (MATE, "FreshFlower.jpg", "972b0a0c4e5e3fa9", "test"),
    (MATE, "Garden.jpg", "d3095ee09d425ef2", "train"),
    (MATE, "GreenMeadow.jpg", "8fa0de0aa4089f73", "test"),
    (MATE, "LadyBird.jpg", "e35a9a4126ef969c", "train"),
    (MATE, "RainDrops.jpg", "3e4ea9671c28c90a", "test"),
    (MATE, "Storm.jpg", "77ca53077831d323", "train"),
    (MATE, "TwoWings.jpg", "665e5abf8a539907", "test"),
    (MATE, "Wood.jpg", "19c78500ac00a622", "train"),
    (MATE, "YellowFlower.jpg", "254da96256acb7ad", "test"),
]

FLAGS = flags.FLAGS
define_data_dir()
flags.declare_key_flag("data_dir")  # listed in --help
flags.DEFINE_string(
    "backgrounds_dir",
    "/tmp/keras_rmac_cluttered_coil/backgrounds",
    "Where the Debian packages are extracted (filled when missing).",
)
flags.DEFINE_string(
    "out_dir",
    "/tmp/keras_rmac_cluttered_coil/data",
    "The generated data set (images, lists, boxes).",
)
flags.DEFINE_list(
    "parts",
    ["generate", "sheet", "clean", "recall", "retrieval"],
    "Steps: generate, sheet, clean, recall, retrieval.",
)
flags.DEFINE_string(
    "clean_objects",
    "1-10",
    "Train objects cleaned by --parts=clean: 'A-B' or a comma list.",
)
flags.DEFINE_integer("workers", 2, "`keras-rmac clean --workers`.")
flags.DEFINE_integer(
    "shortlist_k", 0, "`keras-rmac clean --shortlist-k` (0: all pairs)."
)
flags.DEFINE_integer("max_size", 256, "Retrieval: longest side (cluttered).")
flags.DEFINE_integer("coil_max_size", 224, "Retrieval: plain COIL-100 side.")
flags.DEFINE_integer(
    "pca_step_degrees",
    15,
    "Retrieval: ShiftPCA learned on train views at multiples of this.",
)
flags.DEFINE_integer("batch_size", 16, "Images per forward pass.")
flags.DEFINE_bool("write", True, "Write benchmarks/RESULTS.md sections.")


# ---------------------------------------------------------------------------
# Backgrounds.


def _package_file(root, package, name):
    return root / package[0] / package[2] / name


def fetch_backgrounds(root: pathlib.Path) -> None:
    """Extracts the two Debian packages into `root` if a file is missing."""
    missing = {
        p
        for p, name, _, _ in BACKGROUNDS
        if not _package_file(root, p, name).is_file()
    }
    for package, version, _ in sorted(missing):
        target = root / package
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["apt-get", "download", f"{package}={version}"],
            cwd=root,
            check=True,
        )
        deb = root / f"{package}_{version}_all.deb"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(target)], check=True)


def load_photos(root: pathlib.Path, split: str):
    """The split's background photos (RGB uint8, shorter side reduced to
    `PHOTO_SHORT_SIDE`) and their manifest rows, sha256 checked."""
    from PIL import Image

    from keras_rmac.fileio import file_sha256

    photos, rows = [], []
    for package, name, digest, which in BACKGROUNDS:
        if which != split:
            continue
        path = _package_file(root, package, name)
        actual = file_sha256(path)
        if not actual.startswith(digest):
            raise ValueError(
                f"{path}: sha256 {actual[:16]}..., expected {digest}...; "
                f"remove {root} to extract {package[0]} {package[1]} again."
            )
        image = Image.open(path).convert("RGB")
        scale = PHOTO_SHORT_SIDE / min(image.size)
        if scale < 1:
            size = (round(image.size[0] * scale), round(image.size[1] * scale))
            image = image.resize(size, Image.Resampling.LANCZOS)
        photos.append(np.asarray(image))
        rows.append(
            {
                "package": package[0],
                "version": package[1],
                "file": f"/{package[2]}/{name}",
                "sha256": actual,
            }
        )
    return photos, rows


# ---------------------------------------------------------------------------
# Generation.


def load_backgrounds(root: pathlib.Path):
    """`{split: (photos, manifest rows)}`, extracting the packages first
    when files are missing."""
    fetch_backgrounds(root)
    return {split: load_photos(root, split) for split in clutter.SPLITS}


def data_section(out: pathlib.Path) -> str:
    """What was generated: counts, occluders, visible shares, box sizes."""
    records = [
        json.loads(line)
        for line in (out / "metadata.jsonl").read_text().splitlines()
    ]
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for split in clutter.SPLITS:
        mine = [r for r in records if r["split"] == split]
        kinds = {
            k: sum(r["occluder"] == k for r in mine) for k in clutter.OCCLUDERS
        }
        failed = sum("occluder_failed" in r for r in mine)
        visible = np.array(
            [r["visible_fraction"] for r in mine if r["occluder"] != "none"]
        )
        boxes = np.array([r["box"] for r in mine], float)
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        photos = manifest["backgrounds"][split]
        rows.append(
            (
                split,
                len(mine),
                len({r["image"].split("__")[0] for r in mine}),
                len(photos),
                " / ".join(str(kinds[k]) for k in clutter.OCCLUDERS)
                + f" ({failed} gave up)",
                f"{np.median(visible):.2f} [{visible.min():.2f}, "
                f"{visible.max():.2f}]",
                f"{np.median(side):.0f} [{side.min():.0f}, {side.max():.0f}]",
            )
        )
    table = markdown_table(
        [
            "split",
            "images",
            "objects",
            "photos",
            "occluder none / patch / object",
            "visible share when occluded, median [min, max]",
            "true box longest side, px, median [min, max]",
        ],
        rows,
    )
    packages = sorted(
        {
            (b["package"], b["version"])
            for rows_ in manifest["backgrounds"].values()
            for b in rows_
        }
    )
    return (
        "## Cluttered COIL-100 (`benchmarks/cluttered_coil.py`)\n\n"
        "Command: `python -m benchmarks.cluttered_coil --parts=generate` — "
        f"{machine()}, load average {_load()}. COIL-100 objects cut by "
        "mask and pasted with occluders onto background photos from the "
        "Debian bookworm packages "
        + ", ".join(f"`{p}` {v}" for p, v in packages)
        + " (train and test photos disjoint; the script's docstring is the "
        "data README, `benchmarks/cluttered_coil_examples.jpg` shows "
        f"masks and images); {CONFIG.image_size}x{CONFIG.image_size} "
        "JPEGs, true box = extent of the visible object. Parameters "
        f"(fixed before any training): `{manifest['config']}`.\n\n"
        f"{table}\n"
    )


# ---------------------------------------------------------------------------
# Contact sheet (a visual check of masks and boxes).


def contact_sheet(coil_dir, out, path, columns=8):
    """Masks of 16 COIL objects (object on grey, mask outline in red) and
    24 generated images with their true box (green)."""
    import cv2

    tiles = []
    for obj in range(2, 100, 6)[:16]:
        view, mask = files.coil_view(str(coil_dir), f"obj{obj}__0.png")
        tile = np.where(mask[..., None], view, 128).astype(np.uint8)
        contours, _ = cv2.findContours(
            mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        tile = cv2.drawContours(tile.copy(), contours, -1, (255, 0, 0), 1)
        tiles.append(cv2.resize(tile, (CONFIG.image_size,) * 2))
    records = [
        json.loads(line)
        for line in (out / "metadata.jsonl").read_text().splitlines()
    ]
    for record in records[:: max(1, len(records) // 24)][:24]:
        name = record["image"].replace(".png", ".jpg")
        image = cv2.imread(str(out / "images" / record["split"] / name))
        x0, y0, x1, y1 = record["box"]
        cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), (0, 255, 0), 2)
        tiles.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    rows = [
        np.concatenate(tiles[i : i + columns], axis=1)
        for i in range(0, len(tiles), columns)
    ]
    sheet = np.concatenate(rows, axis=0)
    sheet = cv2.resize(sheet, (sheet.shape[1] // 2, sheet.shape[0] // 2))
    sheet = cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), sheet, [cv2.IMWRITE_JPEG_QUALITY, 85])


# ---------------------------------------------------------------------------
# Boxes.


def _objects(text):
    if "-" in text:
        first, last = (int(t) for t in text.split("-"))
        return list(range(first, last + 1))
    return [int(t) for t in text.split(",")]


def clean_section(out: pathlib.Path) -> str:
    """Runs `keras-rmac clean` on the chosen train objects and scores its
    boxes against the true boxes."""
    from keras_rmac.data.labelled import read_image_list
    from keras_rmac.data.labelled import write_image_list

    objects = _objects(FLAGS.clean_objects)
    truth = read_image_list(out / "train_boxes.csv")
    keep = [i for i, n in enumerate(truth.label_names()) if int(n) in objects]
    subset = truth.subset(keep)
    tag = f"objects-{objects[0]}-{objects[-1]}-k{FLAGS.shortlist_k}"
    work = out / "clean" / tag
    work.mkdir(parents=True, exist_ok=True)
    listed = subset.subset(range(len(subset)))
    listed.boxes = None
    write_image_list(work / "list.csv", listed)
    command = [
        sys.executable,
        "-m",
        "keras_rmac.cli.main",
        "clean",
        str(work / "list.csv"),
        "--out",
        str(work / "clean.csv"),
        "--workers",
        str(FLAGS.workers),
        "--quiet",
    ]
    if FLAGS.shortlist_k:
        command += [
            "--shortlist-k",
            str(FLAGS.shortlist_k),
            "--backbone",
            "mobilenet_v2",
            "--max-size",
            str(FLAGS.max_size),
        ]
    started = time.time()
    subprocess.run(command, check=True)
    wall = time.time() - started
    report = json.loads((work / "clean.csv.report.json").read_text())
    per_class = [c["seconds"] for c in report["classes"]]
    resumed = sum(c["resumed"] for c in report["classes"])
    cleaned = read_image_list(work / "clean.csv")
    true_box = dict(zip(subset.paths, subset.boxes))
    true_label = dict(zip(subset.paths, subset.label_names()))
    right = [
        i
        for i, (p, n) in enumerate(zip(cleaned.paths, cleaned.label_names()))
        if true_label.get(p) == n
    ]
    ious = np.array(
        [
            box_iou(cleaned.boxes[i], true_box[cleaned.paths[i]])[0, 0]
            for i in right
        ]
    )
    size = CONFIG.image_size
    whole = box_iou([0, 0, size, size], subset.boxes)[0]
    rows = [
        (
            "`keras-rmac clean` boxes (kept images)",
            f"{len(cleaned)} / {len(subset)}",
            f"{ious.mean():.3f}",
            f"{(ious >= 0.5).mean():.3f}",
        ),
        (
            "whole image as the box (reference)",
            f"{len(subset)} / {len(subset)}",
            f"{whole.mean():.3f}",
            f"{(whole >= 0.5).mean():.3f}",
        ),
    ]
    table = markdown_table(
        ["boxes vs true boxes", "images kept / in", "mean IoU", "IoU >= 0.5"],
        rows,
    )
    shortlist = (
        f" --shortlist-k {FLAGS.shortlist_k} --backbone mobilenet_v2"
        if FLAGS.shortlist_k
        else ""
    )
    return (
        "### Cleaning boxes on cluttered COIL-100\n\n"
        "Command: `python -m benchmarks.cluttered_coil --parts=clean "
        f"--clean_objects={FLAGS.clean_objects} --workers={FLAGS.workers}"
        f" --shortlist_k={FLAGS.shortlist_k}` — {machine()}, "
        f"load average {_load()}. It runs `keras-rmac clean LIST.csv "
        f"--out CLEAN.csv --workers {FLAGS.workers}{shortlist}` (default "
        f"cleaning settings) on the cluttered training images of objects "
        f"{FLAGS.clean_objects} ({len(subset)} images); "
        f"{len(ious)} kept rows have the right label, "
        f"{len(cleaned) - len(ious)} a wrong one; dropped: "
        f"{report['dropped_counts']}. Time per class, one worker: median "
        f"{np.median(per_class):.0f} s, mean {np.mean(per_class):.0f} s "
        f"({resumed} of {len(per_class)} classes resumed from the work "
        f"folder of an earlier run of the same command; this run "
        f"{wall / 60:.1f} min wall). Of all {len(subset)} training "
        f"images, {(ious >= 0.5).sum() / len(subset):.3f} get a cleaning "
        "box with IoU >= 0.5.\n\n"
        f"{table}\n"
    )


def _load():
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------------
# Proposal recall of the rigid grid.


def recall_section(out: pathlib.Path) -> str:
    """Grid recall at N = 16 and N = 256 on the cluttered test split."""
    model = _model()
    size = FLAGS.max_size
    features = model.backbone(model.preprocess(np.zeros((1, size, size, 3))))
    map_h, map_w = features.shape[1:3]
    _, dataset, boxes = load_protocol(out, "test")
    rows = []
    for levels in (3, 8):
        proposals = grid_boxes(map_h, map_w, size, size, levels)
        cells = []
        for n in (16, 256):
            recall, mean_iou = recall_at(proposals, boxes, n)
            cells.append(f"{recall:.3f} ({min(n, len(proposals))})")
        best = box_iou(boxes, proposals).max(axis=1).mean()
        rows.append(
            (f"R-MAC grid, L={levels}", len(proposals), *cells, f"{best:.3f}")
        )
    table = markdown_table(
        [
            "proposals",
            "regions",
            "recall@16 (regions used)",
            "recall@256 (regions used)",
            "mean best IoU (all regions)",
        ],
        rows,
    )
    return (
        "### Proposal recall of the rigid grid (IoU >= 0.5)\n\n"
        f"Command: `python -m benchmarks.cluttered_coil --parts=recall` — "
        f"{machine()}, load average {_load()}. Test split "
        f"({dataset.num_db} images of {size}x{size}); MobileNetV2's "
        f"feature map is {map_h}x{map_w}, so a cell is "
        f"{size / map_w:g} pixels. The grid is the same for every image; "
        "its first N regions in `RegionProposal` order (whole map, then "
        "level 1, 2, ...) are the top N. L=3 is `RMACModel`'s grid: it has "
        "fewer than 16 regions, so both columns use all of them; L=8 is "
        "the first grid whose finest squares are single cells (deeper "
        "levels only repeat single cells); neither reaches 256 regions, "
        "so its recall@256 uses all of them.\n\n"
        f"{table}\n"
    )


# ---------------------------------------------------------------------------
# Off-the-shelf retrieval.


def _model():
    from keras_rmac.models import RMACModel

    return RMACModel(
        "mobilenet_v2", weights=os.path.join(FLAGS.data_dir, WEIGHTS)
    )


def _images(paths, size, boxes=None):
    from keras_rmac.data import image_io

    out = []
    for i, (_, image) in enumerate(image_io.load_images(paths)):
        if isinstance(image, image_io.ImageError):
            raise image
        if boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in boxes[i])
            image = image[y0:y1, x0:x1]
        out.append(
            image_io.resize_longest_side(image.astype("float32"), size).numpy()
        )
    return out


def _features(fn, paths, size, boxes=None):
    """Backbone features per image (crops have their own sizes)."""
    import tensorflow as tf

    feats = []
    batch = FLAGS.batch_size
    for i in range(0, len(paths), batch):
        chunk = None if boxes is None else boxes[i : i + batch]
        images = _images(paths[i : i + batch], size, chunk)
        if boxes is None:
            feats.extend(np.asarray(fn(tf.constant(np.stack(images)))))
        else:
            feats.extend(
                np.asarray(fn(tf.constant(x[None])))[0] for x in images
            )
    return feats


def _map(descriptors, queries, gnd):
    from keras_rmac.evaluation import compute_map

    scores = descriptors @ descriptors[queries].T
    ranks = np.argsort(-scores, axis=0, kind="stable")
    return float(compute_map(ranks, gnd)[0])


def _heads(base, backbone_fn, train_paths, size):
    """R-MAC without and with ShiftPCA learned on `train_paths`."""
    from keras_rmac.models import RMACModel

    plain = RMACModel(
        base.backbone, weights=None, preprocessing=base.preprocessing
    )
    pca = RMACModel(
        base.backbone, weights=None, preprocessing=base.preprocessing
    )
    train = np.stack(_features(backbone_fn, train_paths, size))
    pca.shift_pca.adapt(pca.region_l2(pca.pool(train)).numpy())
    return plain, pca


def _describe(head, feats):
    return np.concatenate([head.head(f[None]).numpy() for f in feats])


def retrieval_section(out: pathlib.Path) -> str:
    """R-MAC mAP on the cluttered test protocol and on plain COIL-100."""
    import tensorflow as tf

    from keras_rmac.data.datasets import load_coil100

    base = _model()
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    backbone_fn = tf.function(
        lambda x: base.backbone(base.preprocess(x), training=False),
        input_signature=spec,
    )
    step = FLAGS.pca_step_degrees
    rows = []
    started = time.time()
    coil = load_coil100(os.path.join(FLAGS.data_dir, "coil100"))
    _, cluttered, boxes = load_protocol(out, "test")
    cases = [
        ("plain COIL-100", coil, FLAGS.coil_max_size, None),
        ("cluttered COIL-100", cluttered, FLAGS.max_size, None),
        (
            "cluttered, images cropped to the true box",
            cluttered,
            FLAGS.max_size,
            boxes,
        ),
    ]
    heads = {}
    for label, dataset, size, crop in cases:
        key = (dataset.name, size)
        if key not in heads:
            fit = [
                p
                for p in dataset.train_paths
                if files.view_degrees(p) % step == 0
            ]
            heads[key] = _heads(base, backbone_fn, fit, size)
        feats = _features(backbone_fn, dataset.db_paths, size, crop)
        queries = np.asarray(dataset.query_db_indices)
        plain, pca = heads[key]
        rows.append(
            (
                label,
                size,
                f"{_map(_describe(plain, feats), queries, dataset.gnd):.4f}",
                f"{_map(_describe(pca, feats), queries, dataset.gnd):.4f}",
            )
        )
    table = markdown_table(
        [
            "test protocol",
            "longest side",
            "R-MAC grid (L=3), no PCA",
            "R-MAC grid + ShiftPCA (train split)",
        ],
        rows,
    )
    return (
        "### Off-the-shelf R-MAC retrieval: cluttered vs plain COIL-100\n\n"
        f"Command: `python -m benchmarks.cluttered_coil --parts=retrieval` "
        f"— {machine()}, load average {_load()}, "
        f"{(time.time() - started) / 60:.1f} min. MobileNetV2 with the "
        "shared torchvision ImageNet weights, single scale, mAP over the "
        "50 test queries (0-degree views; database = objects 51-100 every "
        "15 degrees). ShiftPCA is learned on the train split's region "
        f"vectors (objects 1-50, views at multiples of {step} degrees) of "
        "the same protocol (cluttered or plain). The cropped row is an "
        "oracle, not a method: every database image and query cut to its "
        "true box (resized so its longest side is "
        f"{FLAGS.max_size}), with the cluttered ShiftPCA.\n\n"
        f"{table}\n"
    )


# ---------------------------------------------------------------------------


PARTS = ("generate", "sheet", "clean", "recall", "retrieval")


def main(argv):
    del argv
    unknown = set(FLAGS.parts) - set(PARTS)
    if unknown:
        raise app.UsageError(f"Unknown --parts {sorted(unknown)}; use {PARTS}.")
    coil_dir = pathlib.Path(FLAGS.data_dir) / "coil100"
    if not coil_dir.is_dir():
        raise app.UsageError(
            f"COIL-100 not found at {coil_dir}; pass --data_dir."
        )
    out = pathlib.Path(FLAGS.out_dir)
    if "generate" in FLAGS.parts:
        backgrounds = load_backgrounds(pathlib.Path(FLAGS.backgrounds_dir))
        generate(coil_dir, out, backgrounds)
        body = data_section(out)
        print(body)
        if FLAGS.write:
            write_section("cluttered_coil", body)
    if not (out / "manifest.json").is_file():
        raise app.UsageError(f"No data set in {out}; run --parts=generate.")
    if "sheet" in FLAGS.parts:
        contact_sheet(coil_dir, out, out / "sheet.png")
        print(f"contact sheet: {out / 'sheet.png'}")
        if FLAGS.write:
            contact_sheet(coil_dir, out, EXAMPLES)
    sections = {
        "clean": ("cluttered_coil_clean", clean_section),
        "recall": ("cluttered_coil_recall", recall_section),
        "retrieval": ("cluttered_coil_retrieval", retrieval_section),
    }
    for part, (name, section) in sections.items():
        if part in FLAGS.parts:
            body = section(out)
            print(body)
            if FLAGS.write:
                write_section(name, body)


if __name__ == "__main__":
    app.run(main)
