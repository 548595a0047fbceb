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

Not measured here: retrieval after training on the noisy vs the cleaned
list (it needs the training module, which did not exist when this was
written).

Usage:

    python benchmarks/cleaning.py --workers 2
    python benchmarks/cleaning.py --classes 5 --noresults  # quick look
    python benchmarks/cleaning.py --shortlist_k 20  # R-MAC shortlist
"""

import collections
import os
import pathlib
import platform
import re
import statistics
import tempfile
import time

import numpy as np
from absl import app
from absl import flags
from absl import logging
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

from keras_rmac.data import cleaning

REPO = pathlib.Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- cleaning:begin -->", "<!-- cleaning:end -->"
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
flags.DEFINE_integer(
    "shortlist_k",
    0,
    "Verify only each image's k nearest neighbours by R-MAC descriptor "
    "(MobileNetV2, shared ImageNet weights); 0 verifies all pairs.",
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
    overrides["shortlist_k"] = FLAGS.shortlist_k or None
    return cleaning.CleaningConfig(**overrides)


def write_results(section: str) -> None:
    path = REPO / "benchmarks" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


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
    config = config_from_flags()
    embed, embed_name = (None, "none (all pairs)")
    if FLAGS.shortlist_k:
        embed, embed_name = rmac_embedder()
    logging.info("Noisy list: %s (%d rows)", noisy_csv, len(rows))
    start = time.perf_counter()
    report = cleaning.clean_list(
        noisy_csv,
        work / "clean.csv",
        config=config,
        embed=embed,
        num_workers=FLAGS.workers,
        verbose=1,
    )
    wall = time.perf_counter() - start

    kept = {
        (r.path, r.label): r.box
        for r in cleaning.read_clean_list(work / "clean.csv")
    }
    truth = {k for k, v in source.items() if v == "true"}
    right = sum(1 for k in kept if k in truth)
    precision = right / max(len(kept), 1)
    recall = right / max(len(truth), 1)
    kept_noise = collections.Counter(source[k] for k in kept if k not in truth)
    all_noise = collections.Counter(v for v in source.values() if v != "true")
    ious = []
    for key, box in kept.items():
        if key in truth:
            ref = object_box(key[0])
            if ref is not None:
                ious.append(iou(box, ref))
    per_class = {c["label"]: c for c in report.classes}
    # Stored per class, so resumed classes count with their first timing.
    seconds = [c["seconds"] for c in report.classes]
    resumed = sum(1 for c in report.classes if c["resumed"])
    recall_by_class = {}
    for label in per_class:
        true_rows = [k for k in truth if k[1] == label]
        recall_by_class[label] = sum(1 for k in true_rows if k in kept) / max(
            len(true_rows), 1
        )
    worst = sorted(recall_by_class.items(), key=lambda kv: kv[1])[:8]
    wrong_kept = sorted(k for k in kept if k not in truth)

    pairs = sum(c["num_pairs"] for c in report.classes)
    lines = [
        "## Dataset cleaning (COIL-100 train split + "
        f"{FLAGS.noise_fraction:.0%} noise)",
        "",
        f"`python benchmarks/cleaning.py --workers {FLAGS.workers}"
        + (f" --shortlist_k {FLAGS.shortlist_k}" if FLAGS.shortlist_k else "")
        + "`: objects 1-"
        f"{FLAGS.classes}, all views, each class padded with wrong images "
        "(1/3 views of test objects 51-100, 1/3 views of other train "
        "objects, 1/3 synthetic shapes/noise/textures) to "
        f"{FLAGS.noise_fraction:.0%} of the class; seed {FLAGS.seed}. "
        "Target: precision >= 0.98, recall >= 0.90.",
        "",
        "| metric | value |",
        "|---|---|",
        f"| rows in / kept | {len(rows)} / {len(kept)} |",
        f"| **precision** | **{precision:.4f}** |",
        f"| **recall** | **{recall:.4f}** |",
        f"| classes kept | {report.num_classes_kept} / {report.num_classes} |",
        "| wrong rows kept (test obj / train obj / synthetic) | "
        f"{kept_noise['test_object']}/{all_noise['test_object']} / "
        f"{kept_noise['train_object']}/{all_noise['train_object']} / "
        f"{kept_noise['synthetic']}/{all_noise['synthetic']} |",
        "| box IoU vs thresholded object box (mean / share >= 0.5) | "
        f"{np.mean(ious) if ious else 0:.3f} / "
        f"{np.mean(np.array(ious) >= 0.5) if ious else 0:.3f} |",
        f"| pairs verified | {pairs} |",
        "| time per class (median / mean, one worker) | "
        f"{statistics.median(seconds) if seconds else 0:.1f} s / "
        f"{statistics.mean(seconds) if seconds else 0:.1f} s |",
        f"| wall time ({FLAGS.workers} workers) | {wall:.0f} s"
        + (f" ({resumed} classes resumed)" if resumed else "")
        + " |",
        "",
        f"Shortlist: {embed_name}. Config: `{config.to_dict()}`. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared "
        "with other jobs: times are upper bounds).",
        "",
        "Lowest per-class recall: "
        + ", ".join(f"{label} {r:.2f}" for label, r in worst)
        + ".",
        "",
        f"Wrong rows kept ({len(wrong_kept)}): "
        + (
            ", ".join(
                f"{os.path.basename(p)} in {c}" for p, c in wrong_kept[:20]
            )
            or "none"
        )
        + ("..." if len(wrong_kept) > 20 else "")
        + ".",
        "",
        "Dropped by reason: "
        + ", ".join(f"{k} {v}" for k, v in report.dropped_counts.items())
        + ".",
    ]
    table = "\n".join(lines)
    print(table)
    if FLAGS.results:
        write_results(table)
        logging.info("Wrote %s", REPO / "benchmarks" / "RESULTS.md")


if __name__ == "__main__":
    app.run(main)
