"""Data: the generator, the real on-disk formats, the held-out split, corrupt images, views."""
import hashlib
import io
import logging
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from kdcl_common import ConfigError, DataError, sampling
from kdcl_common.distributed import DistContext
from pretrain import cli, config
from pretrain.data import loader, sources, synthetic
from kdcl_common.images import ImageTooLarge
from pretrain.data.batch import Undecodable

from .conftest import SMOKE, TINY_DATA, tiny_overrides


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
    halves = [list(sampling.GlobalBatchSampler(50, 12, rank=r, world_size=2, seed=5))
              for r in (0, 1)]
    assert len(one) == 4
    for step, batch in enumerate(one):
        assert batch == halves[0][step] + halves[1][step]
    with pytest.raises(ConfigError, match="does not split evenly across 5"):
        sampling.GlobalBatchSampler(50, 12, rank=0, world_size=5, seed=0)


def test_eval_shards_cover_every_image_once():
    shards = [[key for batch in sampling.ShardSampler(23, 4, r, 3) for key in batch]
              for r in range(3)]
    positions = sorted(pos for shard in shards for _, pos in shard)
    assert positions == list(range(23))


def test_corrupt_images_are_skipped_counted_and_then_fatal(tmp_path, tiny_root):
    root = tmp_path / "corrupt"
    shutil.copytree(tiny_root, root)
    victims = sorted((root / "train").rglob("*.jpg"))[:3]
    victims[0].write_bytes(victims[0].read_bytes()[:200])  # truncated JPEG
    data = build(root, batch=40, **{"data.held_out_per_class": 0})
    bad = next(iter(data.train)).bad
    assert [file for file, _ in bad] == [str(victims[0])]  # the file and the reason apart
    assert next(iter(data.train)).size == 39
    logger = logging.getLogger("test-corrupt")
    tracker = loader.CorruptImageTracker(48, 0.05, logger)  # up to 2.4 bad images tolerated
    tracker.update(bad)
    tracker.update([Undecodable(str(victims[0]), "another reason")])  # the same file: once
    assert list(tracker.bad) == [str(victims[0])]
    victims[1].write_text("not an image")
    victims[2].write_bytes(b"")
    with pytest.raises(DataError, match="(?s)3 images could not be decoded.*Repair or remove"):
        tracker.update([Undecodable(str(victims[1]), "x"), Undecodable(str(victims[2]), "y")])


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG of uint16 [C, H, W] (C = 1: grey, 3: RGB), written by hand: neither PIL nor
    torchvision writes 16-bit colour PNGs."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    channels, height, width = pixels.shape
    rows = pixels.transpose(1, 2, 0).astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter 0 on every row
    header = struct.pack(">IIBBBBB", width, height, 16, {1: 0, 3: 2}[channels], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def sixteen_bit(channels: int, height: int = 32, width: int = 32, seed: int = 0) -> np.ndarray:
    """uint16 [C, H, W] covering the whole range, extremes included."""
    pixels = np.random.default_rng(seed).integers(0, 65536, (channels, height, width))
    pixels.reshape(-1)[:6] = [0, 255, 256, 32767, 32768, 65535]
    return pixels.astype(np.uint16)


def to_uint8(pixels: np.ndarray) -> torch.Tensor:
    """What torchvision users get: to_dtype(..., torch.uint8, scale=True), grey made RGB."""
    image = TF.to_dtype(torch.from_numpy(pixels.astype(np.int32)).to(torch.uint16), torch.uint8,
                        scale=True)
    return image.expand(3, -1, -1)


def test_16_bit_and_other_png_modes_decode_to_8_bit_rgb(tmp_path):
    """16-bit PNGs (RGB and grey) decode as torchvision's 8-bit conversion gives them, also
    through PIL's formats (16-bit TIFF: mode I;16, 16-bit PGM: mode I); alpha and palette
    images come out RGB."""
    folder = tmp_path / "images" / "a_class"
    folder.mkdir(parents=True)
    rgb, grey = sixteen_bit(3), sixteen_bit(1, 20, 28, seed=1)
    (folder / "rgb16.png").write_bytes(png16(rgb))
    (folder / "grey16.png").write_bytes(png16(grey))
    Image.fromarray(grey[0]).save(folder / "grey16.tif")  # PIL: mode I;16
    (folder / "grey16.pgm").write_bytes(b"P5\n28 20\n65535\n" + grey.astype(">u2").tobytes())
    source = sources.FolderSource.scan(tmp_path / "images")
    images = {Path(path).name: source.load(i) for i, path in enumerate(source.paths)}
    assert torch.equal(images["rgb16.png"], to_uint8(rgb))
    assert images["rgb16.png"][0, 0, :6].tolist() == [0, 0, 1, 127, 128, 255]  # 65535 -> 255
    for name in ("grey16.png", "grey16.tif", "grey16.pgm"):
        assert images[name].dtype == torch.uint8 and images[name].shape == (3, 20, 28), name
        assert torch.equal(images[name], to_uint8(grey)), name
    colours = np.random.default_rng(2).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    for mode in ("RGBA", "LA", "P", "1"):
        buffer = io.BytesIO()
        Image.fromarray(colours).convert(mode).save(buffer, "PNG")
        image = sources.decode(torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8))
        expected = np.array(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
        assert image.dtype == torch.uint8 and torch.equal(image, torch.from_numpy(expected)), mode


def imagefolder_copy(tiny_root, folder):
    root = folder / "tiny"
    shutil.copytree(tiny_root, root)
    return root, sorted((root / "train").rglob("*.jpg"))


def test_a_run_with_16_bit_pngs_in_the_training_set_finishes(tmp_path, tiny_root):
    root, files = imagefolder_copy(tiny_root, tmp_path)
    for i, path in enumerate(files[:4]):  # two RGB and two grey 16-bit PNGs
        path.unlink()
        path.with_suffix(".png").write_bytes(png16(sixteen_bit(3 if i % 2 else 1, seed=i)))
    argv = [str(SMOKE / "independent.yaml"),
            *tiny_overrides(root, tmp_path, **{"data.dataset": "imagefolder",
                                               "data.held_out_per_class": 0,
                                               "data.max_corrupt_fraction": 0,
                                               "students": "[{arch: cifar_resnet20}]"})]
    assert cli.main(argv) == 0  # max_corrupt_fraction=0: any skipped image would stop it
    log = (tmp_path / "runs" / "smoke" / "independent" / "seed0" / "log.txt").read_text()
    assert "cannot be decoded" not in log


def test_undecodable_files_are_counted_once_across_epochs(tmp_path, tiny_root, capsys):
    """3 bad files read in 3 epochs are 3 images (PIL's messages name a buffer whose address
    changes with every read: the tracker keys on the file), one warning each; a limit of 3
    (0.07 x 48 images = 3.36) lets the run finish, a 4th file would stop it."""
    root, files = imagefolder_copy(tiny_root, tmp_path)
    victims = files[0], files[17], files[40]
    victims[0].write_text("not an image")
    victims[1].write_bytes(b"")
    victims[2].write_bytes(victims[2].read_bytes()[:200])  # a truncated JPEG
    argv = [str(SMOKE / "independent.yaml"),
            *tiny_overrides(root, tmp_path, **{"data.dataset": "imagefolder",
                                               "data.held_out_per_class": 0,
                                               "data.max_corrupt_fraction": 0.07,
                                               "optim.epochs": 3,
                                               "students": "[{arch: cifar_resnet20}]"})]
    assert cli.main(argv) == 0, capsys.readouterr().err
    log = (tmp_path / "runs" / "smoke" / "independent" / "seed0" / "log.txt").read_text()
    warnings = [line for line in log.splitlines() if "cannot be decoded" in line]
    assert len(warnings) == 3 and "0x" not in log
    for victim in victims:
        assert sum(str(victim) in line for line in warnings) == 1, victim
    tracker = loader.CorruptImageTracker(48, 0.07, logging.getLogger("test-corrupt"))
    tracker.update([Undecodable(str(v), "x") for v in victims] * 3)
    with pytest.raises(DataError, match="(?s)4 images could not be decoded.*max_corrupt"):
        tracker.update([Undecodable(str(files[1]), "x")])


def grey_png(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros, compressed to almost nothing whatever its size (how a
    decompression bomb is made), written without holding the image in memory."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

    packer, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + pixels
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def test_an_image_above_the_pixel_limit_is_skipped_without_decoding_and_counted(
        tmp_path, tiny_root):
    """The size comes from the header, so the limit holds for torchvision's decoders too
    (libpng here); the file counts as undecodable, once, against data.max_corrupt_fraction."""
    root, files = imagefolder_copy(tiny_root, tmp_path)
    bomb = files[5].with_suffix(".png")
    files[5].unlink()
    bomb.write_bytes(grey_png(2000, 1500))
    argv = [str(SMOKE / "independent.yaml"),
            *tiny_overrides(root, tmp_path, **{"data.dataset": "imagefolder",
                                               "data.held_out_per_class": 0,
                                               "data.max_image_pixels": 1_000_000,
                                               "data.max_corrupt_fraction": 0.03,
                                               "students": "[{arch: cifar_resnet20}]"})]
    assert cli.main(argv) == 0
    log = (tmp_path / "runs" / "smoke" / "independent" / "seed0" / "log.txt").read_text()
    warnings = [line for line in log.splitlines() if "skipped an image" in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        f"skipped an image that cannot be decoded: {bomb} (ImageTooLarge: 2000x1500 = "
        f"3,000,000 pixels, more than data.max_image_pixels=1,000,000; not decoded)")
    with pytest.raises(ImageTooLarge, match="more than data.max_image_pixels=89,478,485"):
        sources.decode(torch.frombuffer(bytearray(grey_png(10000, 9000)), dtype=torch.uint8))
