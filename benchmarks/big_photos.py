"""Big photos: memory of 108 and 200 MP JPEGs, and what reduced decoding costs.

Two measurements with MobileNetV2 (the shared torchvision ImageNet weights):

1. Peak memory. Each case runs in a fresh Python process that imports the
   library, builds the model and extracts one small JPEG at `--max_size`
   (tracing, allocator warm-up); then the peak-RSS mark is reset
   (`/proc/self/clear_refs`, Linux) and the big photo is decoded by
   `image_io.load_images(draft_size=max_size)` and described by
   `RMACModel.extract(max_size=...)`, as indexing does. The figure is the
   peak RSS during that call minus the RSS just before it. The photos are
   made once in `--workdir` from a COIL-100 image upsampled with Pillow
   (bicubic) plus a tiled +-12 noise texture, so the JPEG has photo-like
   entropy: 16320x12240 (200 MP, Samsung's sensor) and 12000x9000 (108 MP),
   baseline JPEG at quality 90, as cameras write; a progressive 200 MP copy
   shows the refusal of JPEGs whose decoder holds the whole image; a 12 MP
   one is the everyday case. `--whole` adds the 108 MP photo decoded whole
   (reduced decoding off, limits raised), what 0.2.0 would have needed.
2. Descriptor change. COIL-100 images upsampled to a large size and saved
   as JPEG (quality 95) are described at `--max_size` decoded whole and
   resized (the default below the threshold) and decoded at reduced scale
   (what images above `draft_above` get): cosine between the two, per
   image, for reduced sizes of 1, 1.5, 2 and 3 times `max_size` (1: no
   resize after decoding; `load_image` keeps at least 2,
   `pixel_limits.DRAFT_MARGIN`). For scale, the cosine between the
   descriptors of the original pixels and of their JPEG (both whole) is
   the change JPEG compression alone makes. Upsampled COIL images are
   smooth; real photos hold more fine detail, where the two downsamplings
   differ more.

Usage:

    python -m benchmarks.big_photos              # writes RESULTS.md
    python -m benchmarks.big_photos --whole      # adds the whole decode

Needs about 1.5 GB of memory to write the 200 MP photo once (kept in
`--workdir` for later runs), and `--whole` about 3 GB more.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.results import define_data_dir  # noqa: E402
from benchmarks.results import machine  # noqa: E402
from benchmarks.results import markdown_table  # noqa: E402
from benchmarks.results import write_section  # noqa: E402

FLAGS = flags.FLAGS
define_data_dir()
flags.declare_key_flag("data_dir")  # listed in --help
flags.DEFINE_string("workdir", "/tmp/keras_rmac_big_photos", "Photo cache.")
flags.DEFINE_integer("max_size", 512, "Longest side the model sees.")
flags.DEFINE_integer("objects", 20, "COIL-100 objects for the cosines.")
flags.DEFINE_bool("whole", False, "Also decode the 108 MP photo whole.")
flags.DEFINE_bool("write", True, "Write the section of RESULTS.md.")

WEIGHTS = "weights/mobilenet_v2_1.0_224_torchvision_imagenet.weights.h5"
SOURCE = "coil100/obj1__0.png"
SECTION = "big_photos"

# Run in the child process: the peak RSS increase of one extract call.
CHILD = r"""
import json, os, resource, sys, time
import numpy as np
from PIL import Image
from keras_rmac.models import RMACModel
from keras_rmac.data import image_io

photo, weights, max_size, options = sys.argv[1:5]
options = json.loads(options)
max_size = int(max_size)
if options.pop("pil_limit", False):
    Image.MAX_IMAGE_PIXELS = None

def rss(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(field)

model = RMACModel("mobilenet_v2", weights=weights)
small = os.path.join(os.path.dirname(photo), "warmup.jpg")
Image.new("RGB", (800, 600), (90, 120, 150)).save(small)
model.extract([small], max_size=max_size, verbose=0)
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # Resets the peak RSS mark to the current RSS.
    before = rss("VmRSS")
    peak = lambda: rss("VmHWM")
except OSError:  # No clear_refs: the process peak so far (ru_maxrss, KiB).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
outcome = "ok"
max_pixels = options.pop("max_pixels", image_io.DEFAULT_MAX_PIXELS)
try:
    # extract's own decoding, with the limit of the case.
    for _, image in image_io.load_images(
        [photo], max_pixels=max_pixels, draft_size=max_size, **options
    ):
        if isinstance(image, image_io.ImageError):
            raise image
        model.extract(image, max_size=max_size, verbose=0)
except image_io.ImageError as err:
    reason = err.reason.split(";")[0]
    if "progressive" in reason:
        reason = "progressive JPEG, declared size over max_pixels"
    outcome = "refused: " + reason
seconds = time.perf_counter() - start
print(json.dumps({"increase": peak() - before, "seconds": seconds,
                  "outcome": outcome}))
"""


def _photo(path, width, height, progressive=False):
    """Writes (once) a JPEG of the COIL-100 source upsampled with noise."""
    from PIL import Image

    if os.path.exists(path):
        return path
    with Image.open(os.path.join(FLAGS.data_dir, SOURCE)) as src:
        big = src.convert("RGB").resize((width, height), Image.BICUBIC)
    pixels = np.asarray(big).copy()
    del big
    rng = np.random.default_rng(0)
    tile = rng.integers(-12, 13, (512, 512, 1), dtype=np.int16)
    for top in range(0, height, 512):
        rows = pixels[top : top + 512].astype(np.int16)
        reps = (1, -(-width // 512), 1)
        rows += np.tile(tile, reps)[: len(rows), :width]
        pixels[top : top + 512] = np.clip(rows, 0, 255).astype(np.uint8)
        del rows
    tmp = path + ".tmp.jpg"
    Image.fromarray(pixels).save(
        tmp, "JPEG", quality=90, progressive=progressive
    )
    os.replace(tmp, path)
    return path


def _child(photo, options):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            photo,
            os.path.join(FLAGS.data_dir, WEIGHTS),
            str(FLAGS.max_size),
            json.dumps(options),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _memory_rows():
    from keras_rmac.data import image_io
    from keras_rmac.data import pixel_limits

    os.makedirs(FLAGS.workdir, exist_ok=True)
    work = FLAGS.workdir
    cases = [
        ("12 MP", 4000, 3000, False, {}),
        ("108 MP", 12000, 9000, False, {}),
        ("200 MP", 16320, 12240, False, {}),
        ("200 MP progressive", 16320, 12240, True, {}),
    ]
    if FLAGS.whole:
        whole = {"draft_above": None, "pil_limit": True}
        cases.append(("108 MP, decoded whole", 12000, 9000, False, whole))
    rows = []
    for label, width, height, progressive, options in cases:
        name = f"{width}x{height}{'p' if progressive else ''}.jpg"
        path = _photo(os.path.join(work, name), width, height, progressive)
        if options.get("draft_above", 1) is None:
            # 0.2.0 behaviour: the declared size must fit the limit.
            options = dict(options, max_pixels=width * height)
        result = _child(path, options)
        scale = pixel_limits.jpeg_scale(
            width,
            height,
            FLAGS.max_size,
            options.get("draft_above", image_io.DEFAULT_DRAFT_ABOVE),
        )
        dw, dh = pixel_limits.reduced_size(width, height, scale)
        ok = result["outcome"] == "ok"
        rows.append(
            [
                label,
                f"{width}x{height}",
                f"{os.path.getsize(path) / 1e6:.1f} MB",
                f"1/{scale}: {dw}x{dh}" if ok else "-",
                f"{result['increase'] / 2**20:.0f} MB" if ok else "-",
                f"{result['seconds']:.2f}",
                result["outcome"],
            ]
        )
        print(rows[-1], flush=True)
    return rows


def _cosine_rows():
    from PIL import Image

    from keras_rmac.data import image_io
    from keras_rmac.data import pixel_limits
    from keras_rmac.models import RMACModel

    model = RMACModel(
        "mobilenet_v2", weights=os.path.join(FLAGS.data_dir, WEIGHTS)
    )
    names = [f"coil100/obj{i}__0.png" for i in range(1, FLAGS.objects + 1)]
    tmp = os.path.join(FLAGS.workdir, "cosine.jpg")
    size = FLAGS.max_size
    rows = []
    # (upsampled side, reduced side): decoded / resized = 1 (straight to
    # the target, no margin), 1.5, 2 (DRAFT_MARGIN, what load_image does
    # at most) and 3.
    for side, reduced_side in (
        (4096, 512),
        (3072, 768),
        (4096, 1024),
        (3072, 1536),
    ):
        scale = side // reduced_side
        cos, jpeg = [], []
        for name in names:
            with Image.open(os.path.join(FLAGS.data_dir, name)) as src:
                big = src.convert("RGB").resize((side, side), Image.BICUBIC)
            big.save(tmp, "JPEG", quality=95)
            original = np.asarray(big)
            whole = image_io.load_image(tmp)
            with Image.open(tmp) as im:
                im.draft("RGB", (side // scale, side // scale))
                reduced = np.asarray(im.convert("RGB"))
            assert max(reduced.shape) == reduced_side
            a, b, c = model.extract(
                [whole, reduced, original], max_size=size, verbose=0
            )
            cos.append(float(a @ b))
            jpeg.append(float(a @ c))
        margin = reduced_side / size
        used = pixel_limits.jpeg_scale(side, side, size, 0) == scale
        rows.append(
            [
                f"{side}x{side}",
                f"1/{scale}: {reduced_side}",
                f"{margin:g}" + (" (load_image's choice)" if used else ""),
                f"{np.mean(cos):.4f}",
                f"{np.min(cos):.4f}",
                f"{np.mean(jpeg):.4f}",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main(argv):
    del argv
    start = time.time()
    memory = _memory_rows()
    cosines = _cosine_rows()
    memory_table = markdown_table(
        [
            "photo",
            "declared",
            "file",
            "decoded (scale: size)",
            "peak RSS increase",
            "seconds",
            "outcome",
        ],
        memory,
    )
    cosine_table = markdown_table(
        [
            "upsampled to",
            "reduced decoding",
            "decoded / max_size",
            "mean cos(whole, reduced)",
            "min",
            "mean cos(JPEG q95, PNG)",
        ],
        cosines,
    )
    body = (
        "## Big photos (`python -m benchmarks.big_photos"
        + (" --whole" if FLAGS.whole else "")
        + "`)\n\n"
        f"{machine()}. MobileNetV2, `max_size={FLAGS.max_size}`, default "
        "limits (`max_pixels` = `draft_above` = 100 MP). Peak RSS increase "
        "of decoding (`load_images`) and `RMACModel.extract` of one photo "
        "in a fresh process after a "
        "warm-up extract; photos are a COIL-100 image upsampled with "
        "noise, baseline JPEG q90 (see the script's docstring).\n\n"
        f"{memory_table}\n\n"
        f"Descriptor change of reduced decoding, {FLAGS.objects} COIL-100 "
        "objects upsampled (bicubic) and saved as JPEG q95, by how much "
        "larger than `max_size` the reduced decode is; the last column "
        "is what JPEG compression alone changes.\n\n"
        f"{cosine_table}\n\n"
        f"Total time {time.time() - start:.0f} s."
    )
    print(body)
    if FLAGS.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    app.run(main)
