"""Cutout (DeVries & Taylor 2017, the paper's Table 10): its config keys, its holes' draws
under the (seed, epoch, image) contract, and the batched op against a per-image reference, in
the workers' path and the data.decode=device path."""
import numpy as np
import pytest
import torch

from kdcl_common import ConfigError
from kdcl_common.distributed import DistContext
from pretrain import cli, config
from pretrain.data import loader, on_device, photometric, views

from .conftest import SMOKE, TINY_DATA
from .test_views import mixed_root  # noqa: F401 (a fixture)


def load(*overrides):
    return config.load(SMOKE / "independent.yaml", ["data.root=x", *overrides])


def test_cutout_keys_default_and_validation(capsys):
    assert not load().data.cutout and load().data.cutout_size is None
    cifar = load("data.cutout=true", "data.policy=cifar", "data.image_size=32").data
    assert cifar.cutout_size == 8  # DeVries & Taylor's CIFAR-100 side, resolved in the config
    assert load("data.cutout=true", "data.cutout_size=16").data.cutout_size == 16
    for overrides, message in (
            (["data.cutout=true"], "data.cutout_size: the imagenet policy has no default"),
            (["data.cutout=true", "data.cutout_size=0"], r"data.cutout_size=0 must be in \[1, "),
            (["data.cutout=true", "data.cutout_size=49"],
             r"data.cutout_size=49 must be in \[1, data.image_size=48\]"),
            (["data.cutout_size=8"], "data.cutout_size=8 has no effect without Cutout")):
        with pytest.raises(ConfigError, match=message):
            load(*overrides)
    argv = [str(SMOKE / "independent.yaml"), "data.root=x", "data.cutout=true",
            "data.cutout_size=-3", "--print-config"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "data.cutout_size=-3" in err and "Traceback" not in err


def test_cutout_leaves_every_other_draw_unchanged():
    """The holes come after all the other uniforms: crops, flips and jitter are bit-identical
    with Cutout on or off, for every view."""
    plain = views.Policy(32, "random_resized", flip=True, jitter=0.4)
    cut = views.Policy(32, "random_resized", flip=True, jitter=0.4, cutout=8)
    for seed in range(20):
        a = plain.draw(np.random.default_rng(seed), 50, 70, 3)
        b = cut.draw(np.random.default_rng(seed), 50, 70, 3)
        for field in ("boxes", "flip", "jitter", "order"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), field
        assert a.holes is None and b.holes.shape == (3, 4) and b.holes.dtype == np.int64


def test_holes_have_the_configured_side_clipped_at_the_borders():
    size, side = 32, 8
    holes = views.Policy(size, "padded_random", pad=4, flip=True, cutout=side).draw(
        np.random.default_rng(0), 32, 32, 4000).holes
    top, left, bottom, right = holes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (bottom <= size).all() and (right <= size).all()
    inside = (top > 0) & (bottom < size) & (left > 0) & (right < size)
    assert inside.mean() > 0.5
    assert ((bottom - top)[inside] == side).all() and ((right - left)[inside] == side).all()
    # Near a border the square is cut off there, down to half its side.
    for extent in (bottom - top, right - left):
        assert (extent < side).any() and (extent >= side // 2).all()
    # The centre is uniform over the crop's pixels: every row is a centre, about equally often.
    centres = np.where(top > 0, top + side // 2, bottom - (side - side // 2))
    counts = np.bincount(centres, minlength=size)
    assert len(counts) == size and counts.min() > 0.6 * 4000 / size
    # An odd side is that wide (DeVries & Taylor's code gives side - 1 for odd sides).
    assert views.cutout_holes(np.array([[0.5, 0.5]]), 32, 7).tolist() == [[13, 13, 20, 20]]
    assert views.cutout_holes(np.array([[0.0, 0.999]]), 32, 8).tolist() == [[0, 27, 4, 32]]


def reference_cutout(image: torch.Tensor, hole) -> torch.Tensor:
    """DeVries & Taylor's Cutout of one image: a mask of ones with the hole zeroed, times it."""
    top, left, bottom, right = hole
    mask = torch.ones(image.shape[-2:])
    mask[top:bottom, left:right] = 0
    return image * mask


@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_cutout_is_the_per_image_reference(channels_last):
    torch.manual_seed(0)
    x = torch.randn(40, 3, 12, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    holes = torch.from_numpy(views.cutout_holes(np.random.default_rng(0).random((40, 2)), 10, 5))
    holes[:, [0, 2]] = torch.from_numpy(
        views.cutout_holes(np.random.default_rng(1).random((40, 2)), 12, 5))[:, [0, 2]]
    out = photometric.cutout_(x.clone(), holes)
    for n in range(40):
        assert torch.equal(out[n], reference_cutout(x[n], holes[n].tolist())), n


def build(root, decode="cpu", views_=3, cutout=True, workers=0, batch=16):
    overrides = [f"data.root={root}", "data.image_size=24", "data.held_out_per_class=0",
                 f"data.workers={workers}", f"data.decode={decode}",
                 *[f"data.synthetic.{k}={v}" for k, v in TINY_DATA.items()]]
    if cutout:
        overrides += ["data.cutout=true", "data.cutout_size=10"]
    cfg = config.load(SMOKE / "independent.yaml", overrides)
    return loader.build(cfg.data, views_, batch, 0, DistContext())


def test_holes_follow_the_seed_epoch_image_contract(tiny_root):
    data = build(tiny_root)
    dataset, sampler = data.train.dataset, data.train.batch_sampler
    batch = next(iter(data.train))
    keys = next(iter(sampler))
    assert batch.holes.shape == (16, 3, 4)
    # Each image's holes are those of its own draw, whatever batch or order it comes in.
    alone = np.stack([dataset[key].params.holes for key in reversed(keys)])[::-1]
    assert np.array_equal(batch.holes.numpy(), alone)
    # ICL: each student its own hole.
    holes = batch.holes
    differ = (holes[:, 0] != holes[:, 1]).any(1) | (holes[:, 1] != holes[:, 2]).any(1)
    assert differ.float().mean() > 0.8
    # The same with two workers; another epoch draws new holes.
    again = next(iter(build(tiny_root, workers=2).train))
    assert torch.equal(batch.holes, again.holes)
    for v in range(3):
        assert torch.equal(batch.inputs[v], again.inputs[v])
    sampler.set_epoch(1)
    assert not torch.equal(batch.holes, next(iter(data.train)).holes)


def check_cutout(with_cut, without, holes):
    """Inputs with Cutout equal those without it except in the holes, which are zero."""
    for v in range(len(with_cut)):
        for n in range(len(holes)):
            top, left, bottom, right = holes[n, v].tolist()
            mask = torch.zeros(with_cut[v].shape[-2:], dtype=torch.bool)
            mask[top:bottom, left:right] = True
            assert (with_cut[v][n][:, mask] == 0).all()
            assert torch.equal(with_cut[v][n][:, ~mask], without[v][n][:, ~mask])


def test_cutout_in_the_workers_path(tiny_root):
    """A CPU run: the workers apply Cutout after flips, jitter and normalisation, and nothing
    else changes; evaluation (augment=False) makes no holes."""
    data = build(tiny_root)
    cut, plain = next(iter(data.train)), next(iter(build(tiny_root, cutout=False).train))
    assert plain.holes is None
    check_cutout(cut.inputs, plain.inputs, cut.holes)
    samples = [data.train.dataset[k] for k in next(iter(data.train.batch_sampler))]
    crops = loader.Collate(None, augment=True)(samples)  # as a GPU run receives them
    assert torch.equal(crops.holes, cut.holes)
    for v, x in enumerate(data.inputs(crops)[0]):
        assert torch.equal(x, cut.inputs[v])
    unaugmented = data.inputs(crops, augment=False)[0]
    for v, x in enumerate(data.inputs(crops._replace(holes=None), augment=False)[0]):
        assert torch.equal(unaugmented[v], x)


def test_cutout_in_the_device_decode_path(mixed_root):  # noqa: F811 (the fixture)
    """data.decode=device: the same holes, drawn by the workers, applied after the device's
    decode and crop, for the JPEG rows and the rows the workers decoded alike."""
    dev_cut = build(mixed_root, "device", batch=48)  # the whole set: the PNG row included
    dev_plain = build(mixed_root, "device", cutout=False, batch=48)
    batch, plain = next(iter(dev_cut.train)), next(iter(dev_plain.train))
    assert batch.encoded is not None and batch.cpu_rows.numel() == 1
    cpu_batch = next(iter(build(mixed_root, "cpu", batch=48).train))
    assert torch.equal(batch.holes, cpu_batch.holes)  # the same draws on both paths
    pipeline = on_device.InputPipeline(torch.device("cpu"), dev_cut.mean, dev_cut.std, 24, False,
                                       flip=True, jitter=True)
    with_cut, labels, _ = pipeline(batch)
    without, labels_plain, _ = pipeline(plain)
    assert torch.equal(labels, labels_plain)
    check_cutout(with_cut, without, batch.holes)
