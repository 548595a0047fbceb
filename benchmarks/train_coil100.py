"""Fine-tuning R-MAC with triplets on COIL-100: mAP before and after.

Protocol (../shared/data/README.md): train on objects 1-50 (all views);
test database = objects 51-100 at multiples of 15 degrees, queries = their
0-degree views (the query itself is junk). MobileNetV2 with the shared
torchvision ImageNet weights, 224x224 input (COIL's 128x128 upsampled),
R-MAC (L=3) + shift/PCA-whitening learned on the train split's regions.

What runs, through the library's own `keras_rmac.training.train`:

1. the frozen part of the backbone (layers before `--trainable_from`) is
   run once per training image and cached (`cache_features`), shift +
   PCA-whitening is learned from the train split's region vectors;
2. the baseline mAP is measured at the start of `fit` (adapted PCA, no
   training) and again after every epoch;
3. `fit` trains the tail of the backbone and the shift + PCA layer with
   the triplet margin loss, hard negatives re-mined every epoch;
4. the trained model is saved, reloaded from `.keras` and evaluated
   end to end with `RMACModel.extract` on the image files (the headline
   "after" figure);
5. input-pipeline efficiency: steps/s of `fit` on the real image pipeline
   (decode, augment, resize, batch, prefetch) against the same batches
   held in memory as tensors, same model, same trainable layers; and
   triplets/s at batch 1 vs batch `--batch_size` (the batching choice of
   `keras_rmac.data.triplets`).

Hyper-parameters were chosen on a validation split of the train objects
(`--split val`: train on 1-40, evaluate on 41-50, database every 15
degrees, queries at 0/90/180/270 degrees), never on the test objects.

Usage:
    python -m benchmarks.train_coil100
    python -m benchmarks.train_coil100 --split val --epochs 4  # tuning
"""

import json
import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.coil_protocol import WEIGHTS  # noqa: E402
from benchmarks.coil_protocol import evaluation_callback as _callbacks  # noqa: E402
from benchmarks.coil_protocol import mean_ap as _map  # noqa: E402
from benchmarks.coil_protocol import split as _split  # noqa: E402
from benchmarks.results import define_data_dir  # noqa: E402
from benchmarks.results import machine  # noqa: E402
from benchmarks.results import markdown_table  # noqa: E402
from benchmarks.results import write_section  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

FLAGS = flags.FLAGS
define_data_dir()
flags.declare_key_flag("data_dir")  # listed in --help
flags.DEFINE_enum("split", "test", ["test", "val"], "Evaluation split.")
flags.DEFINE_string(
    "train_list",
    None,
    "CSV `path,label[,x0,y0,x1,y1]` (e.g. a `keras-rmac clean` output) to "
    "train on instead of the train split; same test protocol. Used by "
    "benchmarks/clean_vs_noisy.py; never writes RESULTS.md.",
)
flags.DEFINE_bool(
    "use_boxes", False, "With --train_list: crop training images to boxes."
)
flags.DEFINE_string(
    "output_dir", "/tmp/keras_rmac_train_coil100", "Run folder (caches)."
)
flags.DEFINE_integer("image_size", 224, "Training and test image side.")
flags.DEFINE_string("trainable_from", "block_15_expand", "First layer trained.")
flags.DEFINE_enum("optimizer", "adam", ["adam", "sgd"], "Optimizer.")
flags.DEFINE_float("learning_rate", 1e-4, "Learning rate.")
flags.DEFINE_float("lr_decay", 1.0, "Learning rate factor per epoch.")
flags.DEFINE_float("margin", 0.1, "Triplet margin.")
flags.DEFINE_integer("batch_size", 8, "Triplets per step.")
flags.DEFINE_integer("epochs", 8, "Epochs (hard negatives re-mined each).")
flags.DEFINE_integer("steps_per_epoch", 100, "Steps per epoch.")
flags.DEFINE_integer("pool_size", 2000, "Images embedded per mining round.")
flags.DEFINE_integer("negatives_per_query", 4, "Hard negatives per query.")
flags.DEFINE_enum(
    "positive", "random", ["random", "most_similar"], "Positive choice."
)
flags.DEFINE_enum(
    "negatives", "hardest", ["hardest", "semihard"], "Mined negatives."
)
flags.DEFINE_bool("mining", True, "Hard-negative mining (else random).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_integer("pipeline_steps", 20, "Steps timed per pipeline run.")
flags.DEFINE_integer("pipeline_repeats", 3, "Alternating timed runs.")
flags.DEFINE_bool("measure_pipeline", True, "Measure input pipeline.")
flags.DEFINE_bool("write", True, "Write benchmarks/RESULTS.md and the PNG.")
flags.DEFINE_bool(
    "reuse",
    False,
    "Skip training: reuse summary.json, step losses and model.keras of a "
    "previous run in --output_dir, remeasure the pipeline and rewrite.",
)
flags.DEFINE_list(
    "extra_test_summaries",
    [],
    "summary.json files of other --split test runs, reported as such.",
)
flags.DEFINE_list(
    "val_summaries",
    [],
    "summary.json files of --split val runs, tabulated as the tuning evidence.",
)


def _train_list(path, use_boxes):
    """The labelled images of a CSV list, boxes kept only if asked."""
    from keras_rmac.data.triplets import read_image_list

    images = read_image_list(path)
    if use_boxes and images.boxes is None:
        raise ValueError(f"--use_boxes: {path} has no x0,y0,x1,y1 columns.")
    if not use_boxes:
        images.boxes = None
    return images


# ---------------------------------------------------------------------------
# Callbacks.


class _StepTimer:
    """Times `fit` steps after a warm-up, as a Keras callback."""

    def __init__(self, warmup=2):
        import keras

        timer = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if batch + 1 == warmup:
                    timer.start = time.perf_counter()
                timer.end = time.perf_counter()
                timer.batches = batch + 1

        self.callback = Callback()
        self.warmup = warmup

    def steps_per_second(self):
        return (self.batches - self.warmup) / (self.end - self.start)


# ---------------------------------------------------------------------------
# Input pipeline efficiency.


def _pipeline(model_path, train, table_rows, args):
    """Steps/s: real image pipeline vs the same batches in memory."""
    import keras
    import tensorflow as tf

    from keras_rmac.data import triplets as T
    from keras_rmac.models.triplet_model import TripletModel

    rmac = keras.models.load_model(model_path)
    model = TripletModel(rmac, trainable_from=args.trainable_from)
    model.compile(optimizer=keras.optimizers.Adam(1e-7))
    steps = args.pipeline_steps + 2
    table = T.TripletTable(table_rows[: steps * args.batch_size], seed=1)

    def real():
        return T.triplet_dataset(
            train, table, args.image_size, args.batch_size, augment=True
        )

    batches = list(real())
    memory = tf.data.Dataset.from_tensor_slices(
        tuple(
            {k: tf.concat([b[0][k] for b in batches], 0) for k in T.STREAMS}
            if i == 0
            else tf.concat([b[i] for b in batches], 0)
            for i in range(3)
        )
    ).batch(args.batch_size)

    def timed(ds):
        timer = _StepTimer()
        model.fit(ds, verbose=0, callbacks=[timer.callback], shuffle=False)
        return timer.steps_per_second()

    timed(memory.take(3))  # trace once
    results = {"real": [], "memory": []}
    for _ in range(args.pipeline_repeats):
        results["real"].append(timed(real()))
        results["memory"].append(timed(memory))
    # Batch 1 (one triplet per step, as the paper) in memory, same images.
    one = memory.unbatch().batch(1).take(steps)
    timed(one.take(3))
    results["batch1_triplets_per_s"] = timed(one)
    return results


# ---------------------------------------------------------------------------
# Plot (Pillow only: matplotlib is not a dependency).


def _plot(path, step_losses, epoch_maps, steps_per_epoch):
    from PIL import Image
    from PIL import ImageDraw

    width, height, pad = 900, 360, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    panels = [
        ("training loss (running mean per epoch)", step_losses, (40, 90, 200)),
        ("test mAP (start, then each epoch)", epoch_maps, (200, 60, 40)),
    ]
    panel_w = (width - 3 * pad) // 2
    for k, (title, values, colour) in enumerate(panels):
        x0 = pad + k * (panel_w + pad)
        y0, y1 = pad, height - pad
        draw.rectangle([x0, y0, x0 + panel_w, y1], outline="black")
        draw.text((x0, 15), title, fill="black")
        if len(values) < 2:
            continue
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        pts = [
            (
                x0 + panel_w * i / (len(values) - 1),
                y1 - (y1 - y0) * (v - lo) / span,
            )
            for i, v in enumerate(values)
        ]
        draw.line(pts, fill=colour, width=2)
        draw.text((x0 + 4, y0 + 4), f"{hi:.4f}", fill="black")
        draw.text((x0 + 4, y1 - 14), f"{lo:.4f}", fill="black")
        label = "step" if k == 0 else "epoch"
        end = len(values) if k == 0 else len(values) - 1
        draw.text((x0 + panel_w - 60, y1 + 5), f"{label} {end}", fill="black")
    if steps_per_epoch and len(step_losses) > steps_per_epoch:
        x0 = pad
        for e in range(1, len(step_losses) // steps_per_epoch):
            x = x0 + panel_w * e * steps_per_epoch / (len(step_losses) - 1)
            draw.line([(x, pad), (x, height - pad)], fill=(210, 210, 210))
    image.save(path)


# ---------------------------------------------------------------------------


def main(argv):
    del argv
    import keras

    from keras_rmac.data import triplets as T
    from keras_rmac.models.rmac_model import RMACModel
    from keras_rmac.training import TrainConfig
    from keras_rmac.training import cached_features
    from keras_rmac.training import train

    args = FLAGS
    weights = os.path.join(args.data_dir, WEIGHTS)
    out = os.path.join(args.output_dir, args.split)
    os.makedirs(out, exist_ok=True)
    train_images, db_paths, db_labels, queries, gnd = _split(
        args.data_dir, args.split
    )
    if args.train_list:
        if args.split != "test":
            raise app.UsageError("--train_list needs --split test.")
        train_images = _train_list(args.train_list, args.use_boxes)
    if args.reuse:
        with open(os.path.join(out, "summary.json")) as f:
            _finish(json.load(f), train_images, out, args)
        return
    config = TrainConfig(
        coil100=os.path.join(args.data_dir, "coil100"),
        output_dir=out,
        backbone="mobilenet_v2",
        weights=weights,
        trainable_from=args.trainable_from,
        cache_features=True,
        augment=False,
        pca_images=len(train_images),
        image_size=args.image_size,
        optimizer=args.optimizer,
        learning_rate=args.learning_rate,
        lr_decay=args.lr_decay,
        loss="triplet",  # this benchmark measures the triplet loss
        margin=args.margin,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        mining=args.mining,
        pool_size=args.pool_size,
        negatives_per_query=args.negatives_per_query,
        positive=args.positive,
        negatives=args.negatives,
        checkpoint_every=args.steps_per_epoch,
        seed=args.seed,
        verbose=0,
    )
    # A previous run's checkpoint would resume instead of starting over.
    backup = os.path.join(out, "backup")
    if os.path.isdir(backup):
        import shutil

        shutil.rmtree(backup)
    log = os.path.join(out, "log.csv")
    if os.path.exists(log):
        os.remove(log)

    # Test-database features through the same frozen prefix.
    start = time.perf_counter()
    from keras_rmac.models.triplet_model import FeatureEmbedding

    probe = RMACModel("mobilenet_v2", weights=weights)
    db_images = T.LabelledImages.from_labels(db_paths, db_labels)
    db_features = cached_features(
        FeatureEmbedding(probe, args.trainable_from), db_images, config, out
    )
    db_seconds = time.perf_counter() - start
    del probe

    evaluate = _callbacks(db_features, queries, gnd)
    load = {"start": os.getloadavg()[0]}
    result = train(config, images=train_images, callbacks=[evaluate])
    load["after_fit"] = os.getloadavg()[0]
    fit_seconds = result.seconds
    timing = result.timings

    # End to end through the saved model and the public extract().
    start = time.perf_counter()
    trained = keras.models.load_model(result.model_path)
    descriptors = trained.extract(db_paths, max_size=args.image_size)
    map_after = _map(descriptors, queries, gnd)
    extract_seconds = time.perf_counter() - start
    maps = evaluate.maps
    epoch_maps = [maps["before"]] + [maps[e] for e in range(args.epochs)]
    print(
        f"mAP before {maps['before']:.4f}, after (extract) {map_after:.4f}, "
        f"after (cached features) {maps[args.epochs - 1]:.4f}"
    )
    summary = {
        "split": args.split,
        "map_before": maps["before"],
        "map_after_extract": map_after,
        "map_after_cached": maps[args.epochs - 1],
        "epoch_maps": epoch_maps,
        "loss": result.history["loss"],
        "step_losses": evaluate.step_losses,
        "fit_seconds": fit_seconds,
        "db_feature_seconds": db_seconds,
        "extract_seconds": extract_seconds,
        "timing": timing,
        "load_average": load,
        "model_path": result.model_path,
        "train_list": args.train_list,
        "use_boxes": args.use_boxes,
        "train_images": len(train_images),
        "flags": {
            k: getattr(args, k)
            for k in (
                "trainable_from learning_rate lr_decay margin batch_size "
                "epochs steps_per_epoch pool_size negatives_per_query "
                "positive negatives mining optimizer seed image_size"
            ).split()
        },
    }
    _finish(summary, train_images, out, args)


def _finish(summary, train_images, out, args):
    """Pipeline measurement, summary.json, PNG and RESULTS.md."""
    from keras_rmac.data import triplets as T

    pipeline = None
    if args.measure_pipeline:
        rows = T.random_triplets(
            train_images.labels, (args.pipeline_steps + 2) * args.batch_size, 5
        )
        pipeline = _pipeline(summary["model_path"], train_images, rows, args)
        pipeline["load_average"] = os.getloadavg()[0]
        print(json.dumps(pipeline))
    summary["pipeline"] = pipeline
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if args.write and summary["split"] == "test" and not args.train_list:
        png = os.path.join(HERE, "train_coil100_loss.png")
        _plot(
            png,
            summary["step_losses"],
            summary["epoch_maps"],
            summary["flags"]["steps_per_epoch"],
        )
        tuning = []
        for path in args.val_summaries:
            with open(path) as f:
                tuning.append(json.load(f))
        others = []
        for path in args.extra_test_summaries:
            with open(path) as f:
                others.append(json.load(f))
        write_section("train_coil100", _report(summary, args, tuning, others))
        print("wrote", png, "and benchmarks/RESULTS.md")


def _minutes(s):
    t = s.get("timing") or {}
    total = t.get("cache_seconds", 0) + t.get("pca_seconds", 0)
    return (total + s["fit_seconds"]) / 60


def _report(s, args, tuning=(), others=()):
    f = s["flags"]
    pipe = s["pipeline"]
    load = s.get("load_average", {})
    lines = [
        "## Fine-tuning on COIL-100 (`benchmarks/train_coil100.py`)",
        "",
        f"Measured on {machine()}; the 2 cores are shared with other jobs "
        f"(1-minute load average {load.get('start', float('nan')):.1f} "
        f"when `fit` started, {load.get('after_fit', float('nan')):.1f} "
        "when it ended).",
        "",
        "Command: `python -m benchmarks.train_coil100 --epochs "
        f"{f['epochs']} --margin {f['margin']}` (all settings: "
        + ", ".join(f"`{k}={v}`" for k, v in f.items())
        + "). Training images: COIL-100 objects 1-50, "
        f"{f['image_size']}x{f['image_size']}; the backbone up to "
        f"`{f['trainable_from']}` is frozen and its output cached once per "
        "image (`TrainConfig.cache_features`, so no augmentation); the "
        "layers from there on (BatchNorm frozen) and shift + PCA are trained "
        f"with {f['optimizer']}; {f['negatives_per_query']} "
        + ("semi-hard" if f.get("negatives") == "semihard" else "hardest")
        + " negatives per query (at most one per object) re-mined every epoch "
        f"from {f['pool_size']} train images.",
        "",
        markdown_table(
            ["", "test mAP (50 queries)"],
            [
                [
                    "off-the-shelf R-MAC + shift/PCA-whitening (train regions)",
                    f"{s['map_before']:.4f}",
                ],
                [
                    "after triplet fine-tuning (saved `.keras`, "
                    "`RMACModel.extract` on the files)",
                    f"**{s['map_after_extract']:.4f}**",
                ],
                [
                    "gain",
                    f"**{100 * (s['map_after_extract'] - s['map_before']):+.2f}"
                    " points**",
                ],
            ],
        ),
        "",
        "Test mAP after each epoch (cached-feature path, for information "
        "only; nothing was selected on it): "
        + ", ".join(f"{m:.4f}" for m in s["epoch_maps"]),
        "",
        "Loss per epoch: " + ", ".join(f"{v:.4f}" for v in s["loss"]),
        "",
        "![loss and mAP](train_coil100_loss.png)",
        "",
        "(PNG drawn with Pillow's ImageDraw; matplotlib is not a "
        "dependency. Left: Keras's running mean of the loss within each "
        "epoch, per step; the jumps are the epoch starts, where freshly "
        "mined, harder triplets arrive.)",
        "",
    ]
    t = s["timing"]
    rows = [
        [
            "cache frozen-prefix features of the 3568 train images",
            f"{t.get('cache_seconds', float('nan')):.0f} s",
        ],
        [
            "shift + PCA-whitening from their 53520 regions",
            f"{t.get('pca_seconds', float('nan')):.0f} s",
        ],
        [
            "`fit`: training + hard-negative mining",
            f"{s['fit_seconds']:.0f} s",
        ],
        ["**fine-tuning total**", f"**{_minutes(s):.1f} min**"],
        [
            "(evaluation: test-db features; `extract` of the 1200 test "
            "images after)",
            f"{s['db_feature_seconds']:.0f} s; {s['extract_seconds']:.0f} s",
        ],
    ]
    lines += ["Wall time:", "", markdown_table(["stage", "time"], rows), ""]
    if tuning:
        epochs = max(len(v["epoch_maps"]) for v in tuning)
        header = (
            ["margin"] + ["start"] + [f"epoch {e}" for e in range(1, epochs)]
        )
        table = []
        for v in sorted(tuning, key=lambda v: v["flags"]["margin"]):
            table.append(
                [v["flags"]["margin"]] + [f"{m:.4f}" for m in v["epoch_maps"]]
            )
        means = [np.mean(v["epoch_maps"][1:]) for v in tuning]
        best = tuning[int(np.argmax(means))]
        best_epoch = int(np.argmax(best["epoch_maps"][1:])) + 1
        lines += [
            "Tuning, on the validation split only (train on objects 1-40; "
            "objects 41-50 every 15 degrees, 40 queries at 0/90/180/270 "
            "degrees; same other settings): val mAP per epoch. The best "
            f"mean over epochs: margin {best['flags']['margin']}, best at "
            f"epoch {best_epoch}.",
            "",
            markdown_table(header, table),
            "",
        ]
    if others:
        runs = [s, *others]
        per_epoch = [r["fit_seconds"] / r["flags"]["epochs"] for r in runs]
        table = [
            [
                "this run" if r is s else "earlier run",
                r["flags"]["margin"],
                r["flags"]["epochs"],
                f"{r['map_before']:.4f}",
                f"{r['map_after_extract']:.4f}",
                f"{_minutes(r):.1f}",
                f"{r['timing'].get('cache_seconds', 0):.0f} / "
                f"{r['timing'].get('pca_seconds', 0):.0f} / "
                f"{r['fit_seconds']:.0f}",
                f"{sec:.0f}",
            ]
            for r, sec in zip(runs, per_epoch)
        ]
        lines += [
            "Every test-split run made while developing this benchmark, "
            "for completeness (the earlier ones before the validation runs "
            "had settled the margin and the number of epochs):",
            "",
            markdown_table(
                [
                    "run",
                    "margin",
                    "epochs",
                    "mAP before",
                    "mAP after",
                    "fine-tuning min",
                    "cache / PCA / fit s",
                    "fit s per epoch",
                ],
                table,
            ),
            "",
            "The same work per epoch took up to "
            f"{max(per_epoch) / min(per_epoch):.1f}x longer in one run than "
            "in another: the 2 cores are shared with other jobs, so the "
            "30-minute budget holds when the machine is not oversubscribed "
            f"({'every' if max(map(_minutes, runs)) <= 30 else 'not every'}"
            " run above stayed within it).",
            "",
        ]
    if pipe:
        real = float(np.median(pipe["real"]))
        mem = float(np.median(pipe["memory"]))
        bs = f["batch_size"]
        lines += [
            "Input pipeline, measured on the full image path (no feature "
            "cache): same model with the layers from "
            f"`{f['trainable_from']}` trainable, {args.pipeline_steps} timed "
            f"steps of {bs} triplets ({3 * bs} images of "
            f"{f['image_size']}x{f['image_size']} through MobileNetV2 per "
            "step) after 2 warm-up steps, "
            f"{args.pipeline_repeats} alternating runs, median; load "
            f"average {pipe.get('load_average', float('nan')):.1f} at the "
            "end:",
            "",
            markdown_table(
                ["feed", "steps/s (runs)", "triplets/s"],
                [
                    [
                        "real pipeline: decode PNG (Pillow), light "
                        "augmentation, resize, batch, prefetch",
                        f"{real:.3f} ("
                        + ", ".join(f"{v:.3f}" for v in pipe["real"])
                        + ")",
                        f"{real * bs:.2f}",
                    ],
                    [
                        "the same batches as in-memory tensors",
                        f"{mem:.3f} ("
                        + ", ".join(f"{v:.3f}" for v in pipe["memory"])
                        + ")",
                        f"{mem * bs:.2f}",
                    ],
                    [
                        "in memory, one triplet per step (the paper's "
                        "batching)",
                        "",
                        f"{pipe['batch1_triplets_per_s']:.2f}",
                    ],
                ],
            ),
            "",
            f"Real / in-memory: **{real / mem:.2f}x**. Batching {bs} "
            "square triplets per step gives "
            f"{mem * bs / pipe['batch1_triplets_per_s']:.2f}x the "
            "triplets/s of one triplet per step on this CPU.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
