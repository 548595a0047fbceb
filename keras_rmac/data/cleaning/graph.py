"""The graph step: which pairs to verify and which images to keep."""

import collections
from collections.abc import Iterable
from collections.abc import Sequence

import numpy as np

from keras_rmac.data.cleaning.config import CLASS_TOO_SMALL
from keras_rmac.data.cleaning.config import NO_VERIFIED_MATCH
from keras_rmac.data.cleaning.config import NOT_IN_LARGEST_COMPONENT
from keras_rmac.data.cleaning.config import UNREADABLE


def connected_components(
    num_nodes: int, edges: Iterable[tuple[int, int]]
) -> list[list[int]]:
    """Connected components of an undirected graph.

    Args:
        num_nodes: int. Nodes are 0..num_nodes-1.
        edges: (i, j) pairs.

    Returns:
        Components as sorted node lists, largest first; ties are ordered
        by their smallest node.
    """
    parent = list(range(num_nodes))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in edges:
        if not (0 <= i < num_nodes and 0 <= j < num_nodes):
            raise ValueError(
                f"Edge {(i, j)} is out of range for {num_nodes} nodes"
            )
        root_i, root_j = find(i), find(j)
        if root_i != root_j:
            parent[max(root_i, root_j)] = min(root_i, root_j)
    groups = collections.defaultdict(list)
    for node in range(num_nodes):
        groups[find(node)].append(node)
    return sorted(groups.values(), key=lambda c: (-len(c), c[0]))


def select_images(
    num_images: int,
    edges: Sequence[tuple[int, int, int]],
    min_class_size: int,
    unreadable: Iterable[int] = (),
) -> tuple[list[int], dict[int, str]]:
    """The graph step: keeps the largest component of verified pairs.

    Args:
        num_images: int. Images of the class, 0..num_images-1.
        edges: verified pairs (i, j, num_inliers).
        min_class_size: int. Fewer kept images drop the whole class.
        unreadable: indices already dropped as unreadable (they have no
            edges); they keep that reason.

    Returns:
        (kept indices sorted, {dropped index: reason}).
    """
    unreadable = set(unreadable)
    components = connected_components(num_images, [e[:2] for e in edges])
    touched = {i for e in edges for i in e[:2]}
    largest = components[0] if components and len(components[0]) > 1 else []
    reasons = {}
    for i in range(num_images):
        if i in unreadable:
            reasons[i] = UNREADABLE
        elif i not in touched:
            reasons[i] = NO_VERIFIED_MATCH
    in_largest = set(largest)
    for i in touched - in_largest:
        reasons[i] = NOT_IN_LARGEST_COMPONENT
    if len(largest) < min_class_size:
        for i in largest:
            reasons[i] = CLASS_TOO_SMALL
        return [], reasons
    return sorted(largest), reasons


def all_pairs(num_images: int) -> np.ndarray:
    """Every (i, j) with i < j, shape (P, 2)."""
    i, j = np.triu_indices(num_images, k=1)
    return np.stack([i, j], axis=1).astype(np.int64)


def shortlist_pairs(
    descriptors: np.ndarray, k: int, block_size: int = 1024
) -> np.ndarray:
    """Pairs (i, j), i < j, where j is among i's k nearest or vice versa.

    Similarity is the dot product of L2-normalised global descriptors;
    ties go to the lower index. Rows that are all zeros or not finite
    (images the caller could not describe) are paired with every other
    image, so that they are still verified.

    Args:
        descriptors: array (N, D).
        k: int >= 1. Neighbours per image.
        block_size: int. Rows of the similarity matrix computed at once.

    Returns:
        int64 array (P, 2), sorted, unique.
    """
    x = np.asarray(descriptors, np.float64)
    if x.ndim != 2:
        raise ValueError(f"descriptors must be (N, D), got shape {x.shape}")
    n = len(x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < 2:
        return np.zeros((0, 2), np.int64)
    if k >= n - 1:
        return all_pairs(n)
    bad = ~np.all(np.isfinite(x), axis=1)
    x = np.where(bad[:, None], 0.0, x)
    norms = np.linalg.norm(x, axis=1)
    bad |= norms == 0
    x = x / np.maximum(norms, 1e-12)[:, None]
    pairs = []
    good = np.flatnonzero(~bad)
    for start in range(0, len(good), block_size):
        rows = good[start : start + block_size]
        sims = x[rows] @ x[good].T
        sims[np.arange(len(rows)), start + np.arange(len(rows))] = -np.inf
        kk = min(k, len(good) - 1)
        if kk < 1:
            break
        # Stable order: highest similarity first, then lowest index.
        order = np.argsort(-sims, axis=1, kind="stable")[:, :kk]
        for r, row in enumerate(rows):
            for col in order[r]:
                pairs.append((row, good[col]))
    for b in np.flatnonzero(bad):
        pairs.extend((b, other) for other in range(n) if other != b)
    if not pairs:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.asarray(pairs, np.int64), axis=1)
    return np.unique(pairs, axis=0)
