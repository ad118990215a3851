"""COCO evaluation with pycocotools: detections to COCO's result format, then COCOeval.
Metrics are on COCO's 0-100 scale, as its tools print them."""
from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(image_id: int, output: dict, category_ids: list[int],
                    mask_threshold: float = 0.5) -> list[dict]:
    """One torchvision detection output (boxes xyxy, labels 1..K, scores, masks [N,1,H,W]
    probabilities) as COCO result entries (boxes xywh, original category ids, RLE masks)."""
    boxes = output["boxes"].detach().cpu().numpy()
    scores = output["scores"].detach().cpu().numpy().tolist()
    labels = output["labels"].detach().cpu().numpy().tolist()
    results = []
    rles = None
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    for k, (box, score, label) in enumerate(zip(boxes, scores, labels)):
        x1, y1, x2, y2 = (float(v) for v in box)
        entry = {"image_id": image_id, "category_id": category_ids[label - 1],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
        if rles is not None:
            rle = rles[k]
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        results.append(entry)
    return results


def evaluate(coco_gt: COCO, results: list[dict], iou_type: str,
             image_ids: list[int] | None = None) -> dict[str, float | None]:
    """COCOeval's six summary APs (x100) for `iou_type` ('bbox' or 'segm'); None where COCO
    prints -1 (no ground truth of that size). No detections at all scores 0."""
    if not results:
        return {name: 0.0 for name in STAT_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: (round(100 * float(v), 3) if v >= 0 else None)
            for name, v in zip(STAT_NAMES, evaluator.stats[:6])}
