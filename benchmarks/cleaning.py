"""Benchmark: automatic cleaning of a noisy COIL-100 train split.

Builds a noisy labelled list from the COIL-100 train split (objects 1-50,
all views): every class keeps all its own views and receives wrong images
so that they make up `--noise_fraction` of the noisy class. The wrong
images are, in equal shares, views of test objects (51-100), views of
other train objects, and unrelated synthetic pictures generated here
(random shapes on a dark background, coloured noise, smooth textures).
The list is cleaned with `keras_rmac.data.cleaning` and the kept rows are
scored against the truth (a row is right when the image shows the object
of its label):

- precision: kept rows that are right / kept rows;
- recall: kept rows that are right / right rows of the noisy list;
- box IoU: each kept right row's box against the object's box found by
  thresholding COIL's dark background (indicative only);
- time per class: the worker's wall time for one class.

Prints a table and writes it into benchmarks/RESULTS.md between
`<!-- cleaning:begin -->` and `<!-- cleaning:end -->`.

Retrieval after training on the noisy vs the cleaned list is measured by
`benchmarks/clean_vs_noisy.py`, which runs this script (`--work_dir`) for
the lists and then trains on each.

Usage:

    python benchmarks/cleaning.py --workers 2  # all pairs, then k=20
    python benchmarks/cleaning.py --classes 5 --shortlist_k 0 \\
        --noupsampling_study --noresults  # quick look
"""

import collections
import dataclasses
import os
import pathlib
import re
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
from absl import app
from absl import flags
from absl import logging
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import RESULTS  # noqa: E402
from benchmarks.results import machine  # noqa: E402
from benchmarks.results import write_section  # noqa: E402
from keras_rmac.data import cleaning  # noqa: E402
from keras_rmac.data.labelled import read_image_list  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
_NAME = re.compile(r"obj(\d+)__(\d+)\.png$")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "coil_dir",
    None,
    "COIL-100 folder (default: $KERAS_RMAC_DATA/coil100 or "
    "../shared/data/coil100 next to the repository).",
)
flags.DEFINE_integer("classes", 50, "Train objects to use (1..N).")
flags.DEFINE_float("noise_fraction", 0.2, "Share of wrong images per class.")
flags.DEFINE_integer("seed", 0, "Seed for the noise.")
flags.DEFINE_integer("workers", 2, "Worker processes.")
flags.DEFINE_string(
    "work_dir",
    None,
    "Where to write the noisy list, synthetic images and "
    "results (default: a temporary folder). Reusing one resumes.",
)
flags.DEFINE_integer("min_inliers", None, "Override CleaningConfig.")
flags.DEFINE_integer("min_side", None, "Override CleaningConfig.")
flags.DEFINE_float("contrast_threshold", None, "Override CleaningConfig.")
flags.DEFINE_float("inlier_threshold", None, "Override CleaningConfig.")
flags.DEFINE_string("box_method", None, "Override CleaningConfig.")
flags.DEFINE_list(
    "shortlist_k",
    ["0", "20"],
    "Runs to make: for each k, verify only each image's k nearest "
    "neighbours by R-MAC descriptor (MobileNetV2, shared ImageNet "
    "weights); 0 verifies all pairs.",
)
flags.DEFINE_bool(
    "upsampling_study",
    True,
    "Also measure pair verification at min_side 128 / 256 / 384 on the "
    "weakly textured objects and on random pairs of different objects.",
)
flags.DEFINE_bool("results", True, "Write benchmarks/RESULTS.md.")


def coil_dir() -> pathlib.Path:
    if FLAGS.coil_dir:
        return pathlib.Path(FLAGS.coil_dir)
    env = os.environ.get("KERAS_RMAC_DATA")
    base = pathlib.Path(env) if env else REPO.parent / "shared" / "data"
    return base / "coil100"


def coil_views(root: pathlib.Path) -> dict[int, list[str]]:
    """Object number -> its view files, sorted by angle."""
    views = collections.defaultdict(list)
    for name in os.listdir(root):
        match = _NAME.search(name)
        if match:
            views[int(match.group(1))].append(
                (int(match.group(2)), str(root / name))
            )
    if not views:
        raise FileNotFoundError(
            f"No obj{{N}}__{{deg}}.png files in {root}; pass --coil_dir."
        )
    return {k: [p for _, p in sorted(v)] for k, v in views.items()}


def synthetic_image(rng: np.random.Generator, kind: str) -> Image.Image:
    """An unrelated 128x128 picture."""
    size = 128
    if kind == "shapes":  # corners on a dark background, like COIL
        image = Image.new("RGB", (size, size), (20, 20, 20))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(5, 25))):
            x0, y0 = rng.integers(10, size - 30, 2)
            w, h = rng.integers(5, 40, 2)
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            if rng.random() < 0.5:
                draw.rectangle(box, fill=color)
            else:
                draw.ellipse(box, fill=color)
        return image
    if kind == "noise":
        return Image.fromarray(
            rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        )
    # Smooth texture: blurred coloured noise, contrast-stretched.
    small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.BICUBIC)
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(1, 4))))


def build_noisy_list(
    views: dict[int, list[str]], work: pathlib.Path
) -> tuple[list[tuple[str, str]], dict[tuple[str, str], str]]:
    """Rows (path, label) and, per row, its source ("true" or a noise
    kind: "test_object", "train_object", "synthetic")."""
    rng = np.random.default_rng(FLAGS.seed)
    train = list(range(1, FLAGS.classes + 1))
    test = [k for k in range(51, 101) if k in views]
    synth_dir = work / "synthetic"
    synth_dir.mkdir(parents=True, exist_ok=True)
    rows, source = [], {}
    synth_count = 0
    for obj in train:
        label = f"obj{obj}"
        own = views[obj]
        n_noise = int(
            round(len(own) * FLAGS.noise_fraction / (1 - FLAGS.noise_fraction))
        )
        kinds = ["test_object", "train_object", "synthetic"]
        noise = []
        for i in range(n_noise):
            kind = kinds[i % 3]
            if kind == "synthetic":
                path = synth_dir / f"synthetic_{synth_count:05d}.png"
                sub = ("shapes", "noise", "texture")[synth_count % 3]
                if not path.exists():
                    synthetic_image(rng, sub).save(path)
                else:
                    synthetic_image(rng, sub)  # keep the stream in step
                synth_count += 1
                noise.append((str(path), kind))
            else:
                pool = (
                    test
                    if kind == "test_object"
                    else [k for k in train if k != obj] or test
                )
                while True:  # no image twice in one class
                    other = int(rng.choice(pool))
                    path = str(rng.choice(views[other]))
                    if path not in {p for p, _ in noise}:
                        break
                noise.append((path, kind))
        entries = [(p, "true") for p in own] + noise
        order = rng.permutation(len(entries))
        for i in order:
            path, kind = entries[i]
            rows.append((path, label))
            source[(path, label)] = kind
    return rows, source


def object_box(path: str) -> tuple[int, int, int, int] | None:
    """Box of the pixels brighter than COIL's dark background."""
    image = np.asarray(Image.open(path).convert("RGB")).max(axis=2)
    mask = image > 60  # background is about 25-55
    cols = np.flatnonzero(mask.sum(axis=0) >= 3)  # ignore isolated specks
    rows = np.flatnonzero(mask.sum(axis=1) >= 3)
    if len(cols) < 2 or len(rows) < 2:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
    return inter / max(union - inter, 1)


def rmac_embedder():
    """`paths -> descriptors` with MobileNetV2 R-MAC (shared weights)."""
    from keras_rmac.cli import _common
    from keras_rmac.models.rmac_model import RMACModel

    weights = _common.default_weights("mobilenet_v2")
    model = RMACModel("mobilenet_v2", weights=weights, pooling="rmac")

    def embed(paths):
        return model.extract(list(paths), max_size=224, verbose=0)

    return embed, f"MobileNetV2 R-MAC at 224 ({os.path.basename(weights)})"


def config_from_flags() -> cleaning.CleaningConfig:
    overrides = {
        name: getattr(FLAGS, name)
        for name in (
            "min_inliers",
            "min_side",
            "contrast_threshold",
            "inlier_threshold",
            "box_method",
        )
        if getattr(FLAGS, name) is not None
    }
    return cleaning.CleaningConfig(**overrides)


def run_mode(
    k: int,
    noisy_csv: pathlib.Path,
    source: dict[tuple[str, str], str],
    work: pathlib.Path,
) -> dict[str, Any]:
    """Cleans the noisy list once and scores it."""
    config = dataclasses.replace(config_from_flags(), shortlist_k=k or None)
    embed, embed_name = None, "all pairs"
    if k:
        embed, embed_name = rmac_embedder()
        embed_name = f"k={k} nearest by {embed_name}"
    out_dir = work / (f"shortlist-{k}" if k else "all-pairs")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = cleaning.clean_list(
        noisy_csv,
        out_dir / "clean.csv",
        config=config,
        embed=embed,
        num_workers=FLAGS.workers,
        verbose=1,
    )
    wall = time.perf_counter() - start
    resumed = sum(1 for c in report.classes if c["resumed"])
    wall_file = out_dir / "wall_seconds.txt"
    if resumed == 0:
        wall_file.write_text(f"{wall:.1f}\n")
    elif wall_file.exists():  # the run that computed the classes
        wall = float(wall_file.read_text())

    clean = read_image_list(out_dir / "clean.csv", root="")
    kept = {
        (path, label): tuple(int(v) for v in box)
        for path, label, box in zip(
            clean.paths, clean.label_names(), clean.boxes
        )
    }
    truth = {key for key, kind in source.items() if kind == "true"}
    right = sum(1 for key in kept if key in truth)
    ious = []
    for key, box in kept.items():
        ref = object_box(key[0]) if key in truth else None
        if ref is not None:
            ious.append(iou(box, ref))
    recall_by_class = {}
    for c in report.classes:
        rows = [key for key in truth if key[1] == c["label"]]
        recall_by_class[c["label"]] = sum(
            1 for key in rows if key in kept
        ) / max(len(rows), 1)
    # Stored per class, so resumed classes count with their first timing.
    seconds = [c["seconds"] for c in report.classes]
    return {
        "name": embed_name,
        "config": config,
        "report": report,
        "rows": len(source),
        "kept": len(kept),
        "precision": right / max(len(kept), 1),
        "recall": right / max(len(truth), 1),
        "kept_noise": collections.Counter(
            source[key] for key in kept if key not in truth
        ),
        "wrong_kept": sorted(key for key in kept if key not in truth),
        "ious": np.array(ious),
        "worst": sorted(recall_by_class.items(), key=lambda kv: kv[1])[:5],
        "pairs": sum(c["num_pairs"] for c in report.classes),
        "seconds": seconds,
        "wall": wall,
    }


def upsampling_study(views: dict[int, list[str]]) -> list[str]:
    """Pair verification at several SIFT working sizes."""
    from keras_rmac.data import local_features

    hard = [2, 10, 12, 36, 44, 47]  # the weakly textured train objects
    rng = np.random.default_rng(1)
    everything = sorted(p for v in views.values() for p in v)
    sample = [everything[i] for i in rng.choice(len(everything), 250, False)]

    def obj(path):
        return int(_NAME.search(path).group(1))

    different = [
        (a, b)
        for i, a in enumerate(sample)
        for b in sample[i + 1 :]
        if obj(a) != obj(b)
    ]
    different = [different[i] for i in rng.choice(len(different), 4000, False)]
    neighbours = {5: [], 10: []}
    for n in hard:
        by_angle = {int(_NAME.search(p).group(2)): p for p in views.get(n, [])}
        for step in neighbours:
            neighbours[step] += [
                (p, by_angle[(a + step) % 360])
                for a, p in by_angle.items()
                if (a + step) % 360 in by_angle
            ]
    needed = sorted(
        {p for pairs in neighbours.values() for pq in pairs for p in pq}
        | {p for pq in different for p in pq}
    )
    images = {p: np.asarray(Image.open(p).convert("RGB")) for p in needed}
    base = config_from_flags()
    lines = [
        "",
        "Upsampling (COIL views are 128x128): share of pairs verified "
        f"(>= {base.min_inliers} inliers) between views 5 and 10 degrees "
        f"apart of the weakly textured objects {hard}, and among 4000 "
        "random pairs of different objects (test and train); RANSAC "
        "threshold scaled with the working size.",
        "",
        "| SIFT working size (min_side) | keypoints (median) | extraction "
        "ms/image | 5 deg pairs verified | 10 deg pairs verified | "
        "different-object pairs verified |",
        "|---|---|---|---|---|---|",
    ]
    for side in (128, 256, 384):
        config = dataclasses.replace(
            base,
            min_side=side,
            inlier_threshold=base.inlier_threshold * side / 256,
        )
        start = time.perf_counter()
        feats = {
            p: local_features.extract_sift(
                im,
                min_side=config.min_side,
                max_side=config.max_side,
                max_keypoints=config.max_keypoints,
                contrast_threshold=config.contrast_threshold,
            )
            for p, im in images.items()
        }
        extract_ms = (time.perf_counter() - start) / len(feats) * 1000

        def verified(pairs, config=config, feats=feats):
            return np.mean(
                [
                    cleaning.verify_pair(feats[a], feats[b], config)[0]
                    >= config.min_inliers
                    for a, b in pairs
                ]
            )

        wrong = verified(different)
        lines.append(
            f"| {side} | {np.median([len(f) for f in feats.values()]):.0f} "
            f"| {extract_ms:.0f} | {verified(neighbours[5]):.3f} | "
            f"{verified(neighbours[10]):.3f} | {wrong:.4f} "
            f"({int(round(wrong * len(different)))}/{len(different)}) |"
        )
        logging.info("%s", lines[-1])
    return lines


def main(argv):
    del argv
    root = coil_dir()
    views = coil_views(root)
    work = pathlib.Path(
        FLAGS.work_dir or tempfile.mkdtemp(prefix="clean-bench-")
    )
    work.mkdir(parents=True, exist_ok=True)
    rows, source = build_noisy_list(views, work)
    noisy_csv = work / "noisy.csv"
    noisy_csv.write_text(
        "path,label\n" + "".join(f"{p},{c}\n" for p, c in rows)
    )
    logging.info("Noisy list: %s (%d rows)", noisy_csv, len(rows))
    runs = [
        run_mode(int(k), noisy_csv, source, work) for k in FLAGS.shortlist_k
    ]
    all_noise = collections.Counter(v for v in source.values() if v != "true")

    def row(name, fn):
        return f"| {name} | " + " | ".join(fn(r) for r in runs) + " |"

    def noise_kept(r):
        return " / ".join(
            f"{r['kept_noise'][kind]}/{all_noise[kind]}"
            for kind in ("test_object", "train_object", "synthetic")
        )

    def ious(r):
        if not len(r["ious"]):
            return "-"
        return f"{r['ious'].mean():.3f} / {np.mean(r['ious'] >= 0.5):.3f}"

    command = (
        f"python benchmarks/cleaning.py --workers {FLAGS.workers} "
        f"--shortlist_k {','.join(FLAGS.shortlist_k)}"
    )
    lines = [
        "## Dataset cleaning (COIL-100 train split + "
        f"{FLAGS.noise_fraction:.0%} noise)",
        "",
        f"`{command}`: objects 1-{FLAGS.classes}, all views, each class "
        "padded with wrong images (1/3 views of test objects 51-100, 1/3 "
        "views of other train objects, 1/3 synthetic shapes/noise/"
        f"textures) to {FLAGS.noise_fraction:.0%} of the class; seed "
        f"{FLAGS.seed}. Precision and recall are over the (path, label) "
        "rows. Target: precision >= 0.98, recall >= 0.90.",
        "",
        "| | " + " | ".join(r["name"] for r in runs) + " |",
        "|---|" + "---|" * len(runs),
        row("rows in / kept", lambda r: f"{r['rows']} / {r['kept']}"),
        row("**precision**", lambda r: f"**{r['precision']:.4f}**"),
        row("**recall**", lambda r: f"**{r['recall']:.4f}**"),
        row(
            "classes kept",
            lambda r: (
                f"{r['report'].num_classes_kept} / {r['report'].num_classes}"
            ),
        ),
        row("wrong rows kept (test obj / train obj / synthetic)", noise_kept),
        row("box IoU vs thresholded object (mean / share >= 0.5)", ious),
        row("pairs verified", lambda r: str(r["pairs"])),
        row(
            "time per class, one worker (median / mean)",
            lambda r: (
                f"{statistics.median(r['seconds']):.1f} s / "
                f"{statistics.mean(r['seconds']):.1f} s"
            ),
        ),
        row(
            f"wall time, {FLAGS.workers} workers (incl. embedding)",
            lambda r: f"{r['wall']:.0f} s",
        ),
        row(
            "lowest per-class recall",
            lambda r: ", ".join(f"{c} {v:.2f}" for c, v in r["worst"][:3]),
        ),
        row(
            "wrong rows kept",
            lambda r: (
                ", ".join(
                    f"{os.path.basename(p)} in {c}"
                    for p, c in r["wrong_kept"][:5]
                )
                or "none"
            ),
        ),
        "",
        f"Config: `{dataclasses.asdict(runs[0]['config'])}` (shortlist_k "
        f"per column). Machine: {machine()}, shared with other jobs, so "
        "times are upper bounds.",
    ]
    if FLAGS.upsampling_study:
        lines += upsampling_study(views)
    lines += [
        "",
        "Retrieval after training on the noisy vs the cleaned list: see "
        "the `clean_vs_noisy` section (`benchmarks/clean_vs_noisy.py`).",
    ]
    table = "\n".join(lines)
    print(table)
    if FLAGS.results:
        write_section("cleaning", table)
        logging.info("Wrote the cleaning section of %s", RESULTS)


if __name__ == "__main__":
    app.run(main)
