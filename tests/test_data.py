"""Data: the generator, the real on-disk formats, the held-out split, corrupt images, views."""
import hashlib
import logging
import pickle
import shutil

import numpy as np
import pytest
import torch

from kdcl_common import ConfigError, DataError, sampling
from kdcl_common.distributed import DistContext
from pretrain import config
from pretrain.data import loader, sources, synthetic

from .conftest import SMOKE, TINY_DATA


def digest(root):
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.jpg")):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic_and_uses_the_imagenet_layout(tmp_path, tiny_root):
    again = synthetic.generate(tmp_path / "again", **TINY_DATA)
    assert digest(again) == digest(tiny_root)
    train, val = sources.imagefolder_splits(tiny_root)
    assert train.classes == val.classes == ["00_circle_warm", "01_circle_cool",
                                            "02_square_warm", "03_square_cool"]
    assert len(train) == 4 * 12 and len(val) == 4 * 4
    assert train.load(0).shape == (3, 32, 32)


def test_generator_refuses_a_foreign_or_different_folder(tmp_path, tiny_root):
    (tmp_path / "mine").mkdir()
    with pytest.raises(DataError, match="not a generated classification set"):
        synthetic.generate(tmp_path / "mine")
    with pytest.raises(DataError, match="other parameters"):
        synthetic.generate(tiny_root, **{**TINY_DATA, "classes": 5})


def test_missing_and_malformed_imagefolders(tmp_path, tiny_root):
    with pytest.raises(DataError, match="does not exist: set data.root"):
        sources.imagefolder_splits(tmp_path / "nowhere")
    (tmp_path / "only_train" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no val/ folder"):
        sources.imagefolder_splits(tmp_path / "only_train")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_root, broken)
    (broken / "train" / "04_empty").mkdir()
    with pytest.raises(DataError, match="class folder .*04_empty holds no images"):
        sources.imagefolder_splits(broken)


def write_cifar100(root, n_train=60, n_test=20, classes=100):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.permutation(np.arange(n) % classes)  # every class present when n >= classes
        data = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"fine_labels": labels.tolist()}
        with open(root / split, "wb") as f:
            pickle.dump(data, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(classes)]}, f)
    return data


def test_cifar100_python_layout(tmp_path):
    last = write_cifar100(tmp_path / "cifar-100-python")
    train, test = sources.cifar100_splits(tmp_path)  # the parent folder works too
    assert len(train) == 60 and len(test) == 20 and len(train.classes) == 100
    image = test.load(3)
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    # CIFAR stores planes: the first 1024 bytes are the red channel, row-major
    assert torch.equal(image[0].flatten(), torch.from_numpy(last[b"data"][3][:1024]))


def test_cifar100_missing_files(tmp_path):
    with pytest.raises(DataError, match=r"CIFAR-100 files \['train', 'test', 'meta'\] not found"):
        sources.cifar100_splits(tmp_path)


def test_held_out_split_is_per_class_disjoint_and_deterministic():
    targets = np.repeat(np.arange(5), 30)
    train, held = sources.held_out_split(targets, 4, seed=3, num_classes=5)
    assert np.bincount(targets[held]).tolist() == [4] * 5
    assert not set(train) & set(held) and len(train) + len(held) == len(targets)
    again = sources.held_out_split(targets, 4, seed=3, num_classes=5)[1]
    assert np.array_equal(held, again)
    with pytest.raises(DataError, match="lower data.held_out_per_class"):
        sources.held_out_split(targets, 30, seed=0, num_classes=5)


def build(root, workers=0, views=2, batch=8, **overrides):
    extra = [f"{k}={v}" for k, v in overrides.items()]
    cfg = config.load(SMOKE / "independent.yaml",
                      [f"data.root={root}", "data.image_size=24", "data.eval_resize=28",
                       "data.held_out_per_class=2", f"data.workers={workers}",
                       *[f"data.synthetic.{k}={v}" for k, v in TINY_DATA.items()], *extra])
    return loader.build(cfg.data, views, batch, 0, DistContext())


def test_held_out_images_never_reach_training(tiny_root):
    data = build(tiny_root)
    train_indices = set(data.train.dataset.indices.tolist())
    assert not train_indices & set(data.held_out_indices.tolist())
    assert data.train_size == 4 * 12 - 4 * 2
    assert len(data.held_out.dataset) == 8


def test_icl_views_differ_and_are_reproducible(tiny_root):
    data = build(tiny_root, views=3)
    batch = next(iter(data.train))  # a CPU run: the workers hand over the students' inputs
    views = batch.inputs
    assert len(views) == 3 and not batch.bad
    assert views[0].shape == (8, 3, 24, 24) and views[0].dtype == torch.float32
    assert not torch.equal(views[0], views[1])  # each student its own random draw
    assert batch.flip.shape == (8, 3) and batch.jitter.shape == batch.order.shape == (8, 3, 3)
    with_workers = build(tiny_root, workers=2, views=3)
    again = next(iter(with_workers.train))
    for v in range(3):
        assert torch.equal(views[v], again.inputs[v])
    for field in ("labels", "flip", "jitter", "order"):
        assert torch.equal(getattr(batch, field), getattr(again, field)), field
    data.train.batch_sampler.set_epoch(1)
    assert not torch.equal(views[0], next(iter(data.train)).inputs[0])


def test_global_batches_do_not_depend_on_the_number_of_ranks():
    one = list(sampling.GlobalBatchSampler(50, 12, rank=0, world_size=1, seed=5))
    halves = [list(sampling.GlobalBatchSampler(50, 12, rank=r, world_size=2, seed=5)) for r in (0, 1)]
    assert len(one) == 4
    for step, batch in enumerate(one):
        assert batch == halves[0][step] + halves[1][step]
    with pytest.raises(ConfigError, match="does not split evenly across 5"):
        sampling.GlobalBatchSampler(50, 12, rank=0, world_size=5, seed=0)


def test_eval_shards_cover_every_image_once():
    shards = [[key for batch in sampling.ShardSampler(23, 4, r, 3) for key in batch] for r in range(3)]
    positions = sorted(pos for shard in shards for _, pos in shard)
    assert positions == list(range(23))


def test_corrupt_images_are_skipped_counted_and_then_fatal(tmp_path, tiny_root):
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_root, root)
    victims = sorted((root / "train").rglob("*.jpg"))[:3]
    victims[0].write_bytes(victims[0].read_bytes()[:200])  # truncated JPEG
    data = build(root, batch=40, **{"data.held_out_per_class": 0})
    bad = next(iter(data.train)).bad
    assert len(bad) == 1 and victims[0].name in bad[0]
    assert next(iter(data.train)).size == 39
    logger = logging.getLogger("test-corrupt")
    tracker = loader.CorruptImageTracker(48, 0.05, logger)  # up to 2.4 bad images tolerated
    tracker.update(bad)
    tracker.update(bad)  # the same file again is not counted twice
    victims[1].write_text("not an image")
    victims[2].write_bytes(b"")
    with pytest.raises(DataError, match="(?s)3 images could not be decoded.*Repair or remove"):
        tracker.update([f"{victims[1]} (x)", f"{victims[2]} (y)"])
