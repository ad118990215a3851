"""What the mmseg backend adds to mmseg: `CheckSegLabels`, a transform that stops on a label
map whose values fall outside the classes (other than the ignore index) or whose size differs
from its image's, naming the file. What all mmengine backends share is transfer/openmmlab."""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from kdcl_common import DataError


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Place right after LoadAnnotations: the label map must have its image's original size and
    values in [0, num_classes) or the ignore index."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def transform(self, results: dict) -> dict:
        seg = results["gt_seg_map"]
        if tuple(seg.shape[:2]) != tuple(results["ori_shape"][:2]):
            raise DataError(f"{results['seg_map_path']} is {seg.shape[0]}x{seg.shape[1]} but its "
                            f"image {results['img_path']} is {results['ori_shape'][0]}x"
                            f"{results['ori_shape'][1]}: the image and label do not match")
        bad = (seg >= self.num_classes) & (seg != self.ignore_index)
        if bad.any():
            values = np.unique(seg[bad])[:10].tolist()
            raise DataError(f"{results['seg_map_path']} holds label values {values} outside the "
                            f"{self.num_classes} classes (0..{self.num_classes - 1}, and "
                            f"{self.ignore_index} to ignore): are these *_labelTrainIds.png maps "
                            f"of this dataset?")
        return results
