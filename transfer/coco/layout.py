"""Where the files of a COCO split are under its root (standard library only)."""
from __future__ import annotations

LAYOUT = ("root/train2017/*.jpg, root/val2017/*.jpg, "
          "root/annotations/instances_train2017.json, root/annotations/instances_val2017.json")


def split_files(*splits: str) -> tuple[str, ...]:
    """The files of COCO splits under the root: each split's image folder and its instances
    annotations (what identifies the data: kdcl_common/fingerprint.py)."""
    return tuple(p for split in splits for p in (split, f"annotations/instances_{split}.json"))
