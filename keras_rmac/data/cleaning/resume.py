"""Per-class work files, so that a restarted run skips finished classes."""

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence

from keras_rmac.data.cleaning.config import CleaningConfig
from keras_rmac.data.cleaning.one_class import ClassResult

logger = logging.getLogger(__name__)

_WORK_FORMAT = 1


def work_file(work_dir: str, label: str) -> str:
    """A file-system-safe, collision-free file name for a class."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", label)[:60]
    digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:10]
    return os.path.join(work_dir, f"{safe}-{digest}.json")


def fingerprint(
    label: str, paths: Sequence[str], config: CleaningConfig, shortlist: bool
) -> str:
    payload = json.dumps(
        {
            "format": _WORK_FORMAT,
            "label": label,
            "paths": list(paths),
            "config": config.to_dict(),
            "shortlist": shortlist,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def load_finished(path: str, fingerprint: str) -> ClassResult | None:
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("fingerprint") != fingerprint:
            logger.info("%s is from other inputs or settings; redoing", path)
            return None
        return ClassResult.from_dict(data["result"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("Ignoring unreadable work file %s (%s)", path, error)
        return None
