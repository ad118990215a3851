"""The augmentation policy and the batched input pipeline, against torchvision's own transforms:
crop boxes, crops, colour jitter, flips and normalisation, and the JPEG decode-and-crop path
of data.decode=device (run here on the CPU, the same code as on a GPU)."""
import io
import logging
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from kdcl_common import ConfigError
from kdcl_common.distributed import DistContext
from pretrain import config
from pretrain.data import loader, on_device, photometric, sources, views

from .conftest import SMOKE, TINY_DATA


def test_random_resized_boxes_follow_torchvision():
    """Same support and the same distribution as RandomResizedCrop.get_params."""
    rng, scale, (height, width) = np.random.default_rng(0), (0.08, 1.0), (120, 200)
    ours = views.Policy(32, "random_resized", scale=scale).draw(rng, height, width, 4000).boxes
    top, left, h, w = ours.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    torch.manual_seed(0)
    image = torch.zeros(3, height, width)
    theirs = np.array([v2.RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3])
                       for _ in range(4000)])
    for stat in (lambda b: b[:, 2] * b[:, 3] / (height * width),  # area fraction
                 lambda b: np.log(b[:, 3] / b[:, 2]),               # log aspect ratio
                 lambda b: b[:, 0] + b[:, 2] / 2):                   # vertical centre
        a, b = stat(ours), stat(theirs)
        assert abs(a.mean() - b.mean()) < 4 * math.hypot(a.std(), b.std()) / math.sqrt(4000)
        assert abs(a.std() - b.std()) < 0.1 * b.std()


def test_random_resized_boxes_fall_back_to_torchvisions_centre_crop():
    for height, width in ((10, 100), (100, 10), (30, 31)):
        u = np.random.default_rng(0).random(views.UNIFORMS).tolist()
        ours = views.random_resized_box(u, height, width, (2.0, 3.0))
        theirs = v2.RandomResizedCrop.get_params(torch.zeros(3, height, width), [2.0, 3.0],
                                                 [3 / 4, 4 / 3])
        assert ours == tuple(theirs)


def test_random_resized_boxes_try_attempts_times():
    """views.ATTEMPTS sets the number of tries, as torchvision's 10: the last try is used when
    all before it fail, the centre crop when all fail."""
    height, width, scale = 60, 80, (0.08, 4.0)  # area draw 1.0 -> 4x the image: never fits
    position = [0.5, 0.5]
    rest = [0.0] * (views.UNIFORMS - 2 * views.ATTEMPTS - 2)
    last_fits = [1.0, 0.5] * (views.ATTEMPTS - 1) + [0.0, 0.5] + position + rest
    assert len(last_fits) == views.UNIFORMS and views.TRIES == slice(0, 2 * views.ATTEMPTS)
    top, left, h, w = views.random_resized_box(last_fits, height, width, scale)
    side = round(math.sqrt(0.08 * height * width))  # the last try: 8 % of the area, aspect 1
    assert (h, w) == (side, side) and (top, left) == ((height - h + 1) // 2, (width - w + 1) // 2)
    none_fits = [1.0, 0.5] * views.ATTEMPTS + position + rest
    assert views.random_resized_box(none_fits, height, width, scale) == (0, 0, 60, 80)


def test_crop_views_are_torchvisions_resized_crops():
    image = torch.randint(0, 256, (3, 90, 70), dtype=torch.uint8)
    boxes = np.array([[5, 7, 40, 30], [0, 0, 90, 70], [10, 3, 12, 20]])
    out = views.crop_views(image, boxes, 32)
    for v, (top, left, h, w) in enumerate(boxes):
        expected = TF.resized_crop(image, top, left, h, w, [32, 32], antialias=True)
        assert torch.equal(out[v], expected)
    padded = views.crop_views(image[:, :32, :32], np.array([[0, 8, 32, 32]]), 32, pad=4)
    assert torch.equal(padded[0], TF.pad(image[:, :32, :32], 4)[:, :32, 8:40])


def test_policies_from_the_config():
    cfg = config.load(SMOKE / "independent.yaml", ["data.root=x"]).data
    train = views.train_policy(cfg)
    assert (train.kind, train.scale, train.flip, train.jitter) == (
        "random_resized", (0.35, 1.0), True, 0.4)
    params = train.draw(np.random.default_rng(1), 64, 64, 3)
    assert params.boxes.shape == (3, 4) and params.flip.shape == (3,)
    assert ((params.jitter >= 0.6) & (params.jitter <= 1.4)).all()
    assert sorted(params.order[0].tolist()) == [0, 1, 2]
    centre = views.eval_policy(cfg).draw(np.random.default_rng(0), 100, 80, 1)
    side = round(80 * 48 / 56)  # shorter side to 56, then the centred 48
    assert centre.boxes.tolist() == [[(100 - side) // 2, (80 - side) // 2, side, side]]
    assert not centre.flip.any() and (centre.jitter == 1).all()


def test_batched_colour_jitter_is_torchvisions_per_image():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 9, 11)
    factors = torch.rand(6, 3) * 1.2 + 0.4
    order = torch.stack([torch.randperm(3) for _ in range(6)])
    out = photometric.colour_jitter_(x.clone(), factors, order, bound=1.0)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for n in range(6):
        expected = x[n]
        for op in order[n].tolist():
            expected = ops[op](expected, float(factors[n, op]))
        torch.testing.assert_close(out[n], expected, rtol=0, atol=1e-5)


def make_batch(images, flip, jitter, order):
    b, v = flip.shape
    return loader.Batch(images, torch.arange(b), flip, jitter, order, [])


@pytest.mark.parametrize("channels_last", [False, True])
def test_input_pipeline_flips_jitters_normalises_per_view(channels_last):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 2, 3, 8, 8), dtype=torch.uint8)
    flip = torch.tensor([[True, False], [False, False], [True, True], [False, True]])
    jitter, order = torch.rand(4, 2, 3) + 0.5, torch.stack([torch.randperm(3) for _ in range(8)])
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    pipeline = on_device.InputPipeline(torch.device("cpu"), mean, std, 8, channels_last,
                                       flip=True, jitter=True)
    inputs, labels, _ = pipeline(make_batch(images, flip, jitter, order.view(4, 2, 3)))
    assert len(inputs) == 2 and torch.equal(labels, torch.arange(4))
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    for v in range(2):
        assert inputs[v].is_contiguous(memory_format=torch.channels_last if channels_last
                                       else torch.contiguous_format)
        for b in range(4):
            x = images[b, v].float() / 255
            x = x.flip(-1) if flip[b, v] else x
            x = photometric.colour_jitter_(x[None], jitter[b, v][None],
                                        order.view(4, 2, 3)[b, v][None], bound=1.0)[0]
            torch.testing.assert_close(inputs[v][b], (x - m) / s, rtol=0, atol=1e-4)
    plain = pipeline(make_batch(images, flip, jitter, order.view(4, 2, 3)), augment=False)[0]
    torch.testing.assert_close(plain[1], (images[:, 1].float() / 255 - m) / s)


def smooth_image(height, width, seed=0):
    """Gradients, a few sinusoids and a sharp-edged box: what resampling errors show on."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    channels = []
    for _ in range(3):
        f = torch.rand(4, generator=g)
        c = 128 + 60 * torch.sin(x * f[0] * 0.3 + y * f[1] * 0.2) + 40 * torch.cos(y * f[2] * 0.1)
        c[height // 4:height // 2, width // 3:width // 2] = 255 * f[3]
        channels.append(c)
    return torch.stack(channels).clamp(0, 255).round().to(torch.uint8)


def test_device_crops_match_the_bilinear_resize():
    images = [smooth_image(60, 90, 0), smooth_image(200, 150, 1)]
    # HWC memory, as the CPU decoder returns it: the flat buffer must follow the strides
    images[1] = images[1].permute(1, 2, 0).contiguous().permute(2, 0, 1)
    size = 32
    boxes = np.array([[3, 5, 20, 24],      # enlarged: exactly the bilinear resize
                      [0, 0, 60, 90],      # reduced 2-3x
                      [10, 20, 150, 120],  # reduced ~4.7x
                      [7, 9, 32, 32]])     # copied
    source = np.array([0, 0, 1, 1])
    out = on_device.crop_resize(images, boxes, source, size)
    for n, (top, left, h, w) in enumerate(boxes):
        crop = images[source[n]][None, :, top:top + h, left:left + w].float()
        reference = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
        error = (out[n] - reference).abs()
        if h <= size and w <= size:  # no filtering involved: the same arithmetic
            assert error.max() < 1e-3, n
        else:  # k x k box of bilinear samples vs torchvision's triangle filter
            unfiltered = F.interpolate(crop, size=(size, size), mode="bilinear",
                                       align_corners=False)[0]
            assert error.mean() < 1.5 and error.max() < 30, (n, error.mean(), error.max())
            assert error.mean() < 0.6 * (unfiltered - reference).abs().mean()  # it filters


def encode(image: torch.Tensor, fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, fmt, quality=95)
    return buffer.getvalue()


@pytest.fixture()
def mixed_root(tmp_path, tiny_root):
    """The tiny set with larger JPEGs, one PNG (decoded by the workers) and one grey JPEG."""
    root = tmp_path / "mixed"
    shutil.copytree(tiny_root, root)
    files = sorted((root / "train").rglob("*.jpg"))
    for i, path in enumerate(files):
        path.write_bytes(encode(smooth_image(70 + i % 5 * 10, 90, seed=i)))
    files[1].write_bytes(encode(smooth_image(64, 64, 1), "PNG"))
    grey = Image.fromarray(smooth_image(80, 60, 2)[0].numpy())
    buffer = io.BytesIO()
    grey.save(buffer, "JPEG")
    files[2].write_bytes(buffer.getvalue())
    return root


def build(root, decode, **extra):
    overrides = [f"data.root={root}", "data.image_size=24", "data.held_out_per_class=0",
                 "data.workers=0", f"data.decode={decode}",
                 *[f"data.synthetic.{k}={v}" for k, v in TINY_DATA.items()],
                 *[f"{k}={v}" for k, v in extra.items()]]
    cfg = config.load(SMOKE / "independent.yaml", overrides)
    return cfg, loader.build(cfg.data, 2, 48, 0, DistContext())


def test_decoding_on_the_device_gives_the_same_views(mixed_root):
    cfg, cpu = build(mixed_root, "cpu")
    _, dev = build(mixed_root, "device")
    on_cpu, on_dev = next(iter(cpu.train)), next(iter(dev.train))
    assert on_dev.encoded is not None and len(on_dev.encoded.rows) == 47  # all but the PNG
    assert on_dev.cpu_rows.numel() == 1 and on_dev.views.shape == (1, 2, 3, 24, 24)
    for field in ("labels", "flip", "jitter", "order"):  # the same draws
        assert torch.equal(getattr(on_cpu, field), getattr(on_dev, field)), field
    pipeline = on_device.InputPipeline(torch.device("cpu"), cpu.mean, cpu.std, 24, False,
                                       flip=True, jitter=True)
    a, labels_a, _ = pipeline(on_cpu)
    b, labels_b, _ = pipeline(on_dev)
    assert torch.equal(labels_a, labels_b)
    for v in range(2):
        # the workers' crops are uint8-rounded and filtered with a triangle, the device's not
        difference = (a[v] - b[v]).abs().mean((1, 2, 3)) * 0.226 * 255  # in grey levels
        assert difference.max() < 2.5, difference


def test_cpu_workers_run_the_input_pipeline_a_gpu_runs_it_on_the_device(tiny_root):
    """On a CPU run the workers hand over finished inputs (Collate with the pipeline); on a GPU
    the batch crosses as uint8 crops and the device runs the same pipeline: same inputs."""
    cfg, data = build(tiny_root, "cpu")
    assert isinstance(data.train.collate_fn.pipeline, on_device.InputPipeline)  # CPU run
    dataset = data.train.dataset
    samples = [dataset[k] for k in next(iter(data.train.batch_sampler))]
    in_workers = loader.Collate(data.inputs, augment=True)(samples)
    crops = loader.Collate(None, augment=True)(samples)
    assert in_workers.inputs is not None and crops.inputs is None and crops.views.numel()
    a, labels_a, _ = data.inputs(in_workers)
    b, labels_b, _ = data.inputs(crops)
    assert torch.equal(labels_a, labels_b)
    for v in range(2):
        assert torch.equal(a[v], b[v])
    unaugmented = data.inputs(crops, augment=False)[0]
    assert not torch.allclose(unaugmented[0], b[0])  # flips and jitter did something


def test_undecodable_jpegs_on_the_device_are_reported_and_left_out(mixed_root):
    victim = sorted((mixed_root / "train").rglob("*.jpg"))[5]
    data = victim.read_bytes()
    victim.write_bytes(data[:len(data) * 2 // 3])  # truncated in the image data
    _, dev = build(mixed_root, "device")
    batch = next(iter(dev.train))
    assert not batch.bad  # the worker only read the header
    pipeline = on_device.InputPipeline(torch.device("cpu"), dev.mean, dev.std, 24, False,
                                       flip=True, jitter=True)
    inputs, labels, reported = pipeline(batch)
    assert [file for file, _ in reported] == [str(victim)]
    assert inputs[0].shape[0] == labels.numel() == 47
    # Every epoch decodes it again; the workers (data.decode=cpu) report the same file: the
    # tracker counts it once, whichever path found it.
    _, cpu = build(mixed_root, "cpu")
    from_workers = next(iter(cpu.train)).bad
    assert [file for file, _ in from_workers] == [str(victim)]
    tracker = loader.CorruptImageTracker(48, 0.05, logging.getLogger("test-device"))
    for bad in (reported, pipeline(batch)[2], from_workers):
        tracker.update(bad)
    assert list(tracker.bad) == [str(victim)]


def test_16_bit_pngs_are_decoded_by_the_workers_with_decode_device(mixed_root):
    """data.decode=device sends only 8-bit RGB and grey JPEGs to the device: 16-bit PNGs are
    decoded (to 8 bits) and cropped by the workers, as with data.decode=cpu."""
    from .test_data import png16, sixteen_bit

    files = sorted((mixed_root / "train").rglob("*.jpg"))
    files[3].write_bytes(png16(sixteen_bit(3, 70, 90)))
    files[4].write_bytes(png16(sixteen_bit(1, 50, 40)))
    _, dev = build(mixed_root, "device")
    batch = next(iter(dev.train))
    assert not batch.bad and batch.cpu_rows.numel() == 3  # the 8-bit PNG and the two 16-bit
    assert batch.views.dtype == torch.uint8 and len(batch.encoded.rows) == 45
    pipeline = on_device.InputPipeline(torch.device("cpu"), dev.mean, dev.std, 24, False,
                                       flip=True, jitter=True)
    inputs, labels, reported = pipeline(batch)
    assert not reported and inputs[0].shape == (48, 3, 24, 24) and labels.numel() == 48
    assert all(bool(torch.isfinite(x).all()) for x in inputs)


def test_decode_on_device_needs_files():
    with pytest.raises(ConfigError, match="data.decode=.*one of"):
        config.load(SMOKE / "independent.yaml", ["data.root=x", "data.decode=gpu"])
    cfg = config.load(SMOKE / "independent.yaml", ["data.root=x", "data.decode=device",
                                                   "data.dataset=cifar100"])
    arrays = sources.ArraySource("cifar100/train", ["a"], np.zeros((2, 32, 32, 3), np.uint8),
                                 np.zeros(2, np.int64))
    with pytest.raises(ConfigError, match="decoded already: use data.decode=cpu"):
        loader.check_decode(cfg.data, arrays)


def test_an_image_above_the_pixel_limit_is_left_out_on_both_decode_paths(mixed_root):
    """data.decode=device reads only the JPEG's header in the worker, and the device would
    decode the whole image: the limit is checked there too, before anything is decoded."""
    victim = sorted((mixed_root / "train").rglob("*.jpg"))[7]
    victim.write_bytes(encode(smooth_image(1000, 1200, 3)))
    for decode in ("cpu", "device"):
        _, data = build(mixed_root, decode, **{"data.max_image_pixels": 1_000_000})
        batch = next(iter(data.train))
        assert batch.bad == [(str(victim), "ImageTooLarge: 1200x1000 = 1,200,000 pixels, more "
                                           "than data.max_image_pixels=1,000,000; not decoded")]
        assert batch.labels.numel() == 47, decode
