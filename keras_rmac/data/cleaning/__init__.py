"""Automatic cleaning of a noisy labelled image list, with bounding boxes.

The first contribution of Gordo et al. (IJCV 2017): a landmark data set
collected by text queries holds many images that do not show the landmark
(interiors, maps, portraits...). Within each class, image pairs are matched
with local features and verified geometrically; the verified pairs form a
graph whose largest connected component is kept as the clean class, and
each kept image gets a bounding box from its verified inlier keypoints.

Per class:

1. Every image is loaded with `keras_rmac.data.image_io.load_image`; an
   unreadable image is dropped with the reason, never fatal.
2. SIFT keypoints with RootSIFT descriptors (`local_features.extract_sift`;
   small images are upsampled so that their shorter side reaches
   `min_side`).
3. Candidate pairs: all pairs, or, when the caller passes an `embed`
   function, each image's `shortlist_k` nearest neighbours by global
   descriptor within the class (the cost is then linear in the class size
   instead of quadratic).
4. Each pair: Lowe ratio test, then affine RANSAC (see `local_features`
   for why affine). The pair is verified when at least `min_inliers`
   distinct inliers agree.
5. The connected components of the verified-pair graph; the largest is
   kept (ties: the one holding the earliest image of the list). Images
   with no verified pair, or in another component, are dropped.
6. A class whose kept component has fewer than `min_class_size` images is
   dropped whole.
7. Box of a kept image: each verified pair gives the box of its inlier
   keypoints in that image (the paper's per-pair estimate); the inliers
   are accumulated over all the image's verified pairs, in original pixel
   coordinates. `box_method="union"` takes the box of all of them, i.e.
   the union of the per-pair boxes; `box_method="percentile"` takes, per
   axis, the `box_percentile`-th and (100 - `box_percentile`)-th
   percentiles, which ignores a few stray inliers (a keypoint verified in
   several pairs counts once per pair). Both give integer pixel bounds
   clipped to the image, such that `image[y0:y1, x0:x1]` holds the pixels
   of the points. (The paper merges the per-pair boxes by propagating them
   through the pairs' affine maps; that refinement is not implemented.)

`clean_dataset` runs classes in parallel worker processes, writes each
finished class atomically to a work directory (`<output>.work/`) so that a
restarted run skips them, shows a progress bar, and writes the clean list
(`path,label,x0,y0,x1,y1`, `keras_rmac.data.labelled`'s format) plus a
report (`<output>.report.json` and `<output>.report.txt`) of what was
dropped and why.

Modules, by job: `config` (settings, drop reasons), `graph` (pairs to
verify, connected components), `one_class` (local features, verification,
boxes), `resume` (work files), `workers` (processes), `report`, `dataset`
(`clean_dataset`, `clean_list`). The names below are importable from
`keras_rmac.data.cleaning`.

Reference:
    - [Gordo et al., End-to-end Learning of Deep Visual Representations for
      Image Retrieval, IJCV 2017](https://arxiv.org/abs/1610.07940)
"""

from keras_rmac.data.cleaning.config import CLASS_TOO_SMALL
from keras_rmac.data.cleaning.config import DROP_REASONS
from keras_rmac.data.cleaning.config import NO_VERIFIED_MATCH
from keras_rmac.data.cleaning.config import NOT_IN_LARGEST_COMPONENT
from keras_rmac.data.cleaning.config import UNREADABLE
from keras_rmac.data.cleaning.config import CleaningConfig
from keras_rmac.data.cleaning.dataset import clean_dataset
from keras_rmac.data.cleaning.dataset import clean_list
from keras_rmac.data.cleaning.graph import all_pairs
from keras_rmac.data.cleaning.graph import connected_components
from keras_rmac.data.cleaning.graph import select_images
from keras_rmac.data.cleaning.graph import shortlist_pairs
from keras_rmac.data.cleaning.one_class import ClassResult
from keras_rmac.data.cleaning.one_class import clean_class
from keras_rmac.data.cleaning.one_class import estimate_box
from keras_rmac.data.cleaning.one_class import extract_features
from keras_rmac.data.cleaning.one_class import verify_pair
from keras_rmac.data.cleaning.report import CleaningReport

__all__ = [
    "CLASS_TOO_SMALL",
    "DROP_REASONS",
    "NOT_IN_LARGEST_COMPONENT",
    "NO_VERIFIED_MATCH",
    "UNREADABLE",
    "ClassResult",
    "CleaningConfig",
    "CleaningReport",
    "all_pairs",
    "clean_class",
    "clean_dataset",
    "clean_list",
    "connected_components",
    "estimate_box",
    "extract_features",
    "select_images",
    "shortlist_pairs",
    "verify_pair",
]
