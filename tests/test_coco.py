"""The generated COCO scenes, the COCO loader's checks, and pycocotools evaluation."""
import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from kdcl_common import DataError
from transfer.coco import evaluate, synthetic
from transfer.coco.dataset import CocoDetection, annotation_mask, load_coco, validate

from .conftest import TINY_COCO


def instances(root, split="train2017"):
    return json.loads((root / "annotations" / f"instances_{split}.json").read_text())


def test_generated_set_has_what_coco_has(tmp_path, tiny_coco):
    again = synthetic.generate(tmp_path / "again", **TINY_COCO)
    assert instances(again) == instances(tiny_coco)  # deterministic
    data = {split: instances(tiny_coco, split) for split in ("train2017", "val2017")}
    anns = data["train2017"]["annotations"] + data["val2017"]["annotations"]
    images = data["train2017"]["images"] + data["val2017"]["images"]
    assert [c["id"] for c in data["train2017"]["categories"]] == [1, 3, 7, 12, 20]
    kinds = {("crowd" if a["iscrowd"] else
              "polygon" if isinstance(a["segmentation"], list) else
              "rle" if isinstance(a["segmentation"]["counts"], str) else "raw") for a in anns}
    assert kinds == {"polygon", "rle", "crowd"}
    assert all(isinstance(a["segmentation"]["counts"], list) for a in anns if a["iscrowd"])
    with_objects = {a["image_id"] for a in anns}
    assert any(img["id"] not in with_objects for img in images)  # images without objects
    modes = {Image.open(tiny_coco / split / img["file_name"]).mode
             for split in ("train2017", "val2017") for img in data[split]["images"]}
    assert modes == {"RGB", "L"}  # grayscale JPEGs too
    assert len({(img["width"], img["height"]) for img in images}) > 1


def test_masks_areas_and_boxes_agree_with_pycocotools(tiny_coco):
    coco = load_coco(tiny_coco / "annotations" / "instances_train2017.json")
    for ann in coco.dataset["annotations"]:
        img = coco.imgs[ann["image_id"]]
        mask = annotation_mask(ann, img["height"], img["width"])
        assert mask.sum() == ann["area"] == coco.annToMask(ann).sum()
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def test_coco_stuff_layout_and_labels(tiny_coco):
    for split in ("train2017", "val2017"):
        assert (tiny_coco / "images" / split).resolve() == (tiny_coco / split).resolve()
        for img in instances(tiny_coco, split)["images"]:
            label = np.asarray(Image.open(tiny_coco / "annotations" / split /
                                          f"{img['id']:012d}_labelTrainIds.png"))
            assert label.shape == (img["height"], img["width"])
            assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5, 6, 255}


def test_dataset_targets(tiny_coco):
    train = CocoDetection(tiny_coco, "train2017", train=True, masks=True)
    val = CocoDetection(tiny_coco, "val2017", train=False, masks=True)
    assert train.num_classes == 5 and len(val) == TINY_COCO["val_images"]
    assert len(train) < TINY_COCO["train_images"]  # images without targets are left out
    image, target = train[(0, 0)]
    assert (image.dtype == torch.float32 and image.shape[0] == 3
            and 0 <= image.min() <= image.max() <= 1)
    assert target["boxes"].shape[1] == 4 and target["labels"].min() >= 1
    assert target["masks"].shape[0] == len(target["labels"])
    # crowd regions are never training targets
    crowd_images = {a["image_id"] for a in train.coco.dataset["annotations"] if a["iscrowd"]}
    for i, image_id in enumerate(train.ids):
        if image_id in crowd_images:
            n = sum(1 for a in train.coco.imgToAnns[image_id] if not a["iscrowd"])
            assert len(train[(0, i)][1]["labels"]) == n


def test_perfect_predictions_score_ap_100(tiny_coco):
    """Detections built from the targets, through the same conversion the engines use."""
    val = CocoDetection(tiny_coco, "val2017", train=False, masks=True)
    results = []
    for i in range(len(val)):
        _, target = val[i]
        n = len(target["labels"])
        output = {"boxes": target["boxes"], "labels": target["labels"],
                  "scores": torch.ones(n), "masks": target["masks"][:, None].float()}
        results += evaluate.to_coco_results(target["image_id"], output, val.category_ids)
    for iou_type in ("bbox", "segm"):
        metrics = evaluate.evaluate(val.coco, results, iou_type)
        assert metrics["AP"] == metrics["AP50"] == metrics["AP75"] == 100.0
        assert metrics["APl"] is None  # no large objects in small scenes: COCO's -1
    worse = [dict(r, bbox=[r["bbox"][0] + 4, *r["bbox"][1:]]) for r in results]
    assert evaluate.evaluate(val.coco, worse, "bbox")["AP"] < 100
    assert evaluate.evaluate(val.coco, [], "bbox")["AP"] == 0.0


def corrupt(dataset, change):
    broken = copy.deepcopy(dataset)
    change(broken)
    return broken


@pytest.mark.parametrize("change,message", [
    (lambda d: d["annotations"][0].update(image_id=999), "annotation 1 refers to image 999"),
    (lambda d: d["annotations"][0].update(category_id=2), "has category 2, which is not listed"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "has bbox \\[1, 2, -3, 4\\]"),
    (lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]), "polygon with 4 coord"),
    (lambda d: d["annotations"][0].update(segmentation={"counts": "x", "size": [1, 2]}),
     "RLE of size \\[1, 2\\]"),
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation 1 .*appears twice"),
    (lambda d: d["annotations"][0].update(iscrowd=2), "iscrowd=2"),
    (lambda d: d.pop("categories"), "no 'categories' list"),
    (lambda d: d["images"][0].update(width="96"), "image 1000 has width='96', height=.*: expected "
     "the image's size in pixels"),
])
def test_malformed_annotations_are_named(tiny_coco, change, message):
    dataset = instances(tiny_coco)
    validate(dataset)  # the generated file itself is fine
    with pytest.raises(DataError, match=message):
        validate(corrupt(dataset, change), "instances_train2017.json")


def test_missing_coco_files(tmp_path, tiny_coco):
    with pytest.raises(DataError, match="COCO files not found.*set data.root"):
        CocoDetection(tmp_path, "train2017", train=True, masks=False)
    copy_root = tmp_path / "copy"
    shutil.copytree(tiny_coco, copy_root, symlinks=True)
    victim = sorted((copy_root / "val2017").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=f"1 images listed .* are not in .*{victim.name}"):
        CocoDetection(copy_root, "val2017", train=False, masks=False)
