"""The batched end of the input pipeline: JPEG decoding and cropping (data.decode=device),
horizontal flips, colour jitter, normalisation and Cutout, for every view of a batch at once. It
runs on the training device for GPU runs, and in the loader's workers for CPU runs
(loader.Collate).
The workers drew all the random parameters (views.py), so the result is the same function of
(seed, epoch, image) wherever it runs.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from .batch import Batch, Encoded, Undecodable
from .photometric import cutout_, flip_and_jitter_

MAX_TAPS = 8  # sub-samples per output pixel and axis when cropping on the device
CHUNK_ELEMENTS = 1 << 24  # bounds the gather's temporaries (128 MiB of int64 indices)


def _dense(image: torch.Tensor) -> torch.Tensor:
    """`image` unchanged if its memory is dense (CHW, or HWC as the CPU decoder returns)."""
    if image.is_contiguous() or image.permute(1, 2, 0).is_contiguous():
        return image
    return image.contiguous()


def crop_resize(images: list[torch.Tensor], boxes: np.ndarray, source: np.ndarray,
                size: int) -> torch.Tensor:
    """Crops of images of different sizes, all resized to size x size, without a Python loop
    over them: the images are concatenated into one flat buffer and each output pixel is
    gathered from it. Like roi_align with adaptive sampling, an output pixel averages k x k
    bilinear samples of the crop (k = ceil(crop side / size), at most MAX_TAPS), which filters
    out the aliasing of large reductions; enlarging (k = 1) is exactly the bilinear resize.

    images: uint8 [3, H_i, W_i] on the device; boxes: int [N, 4] (top, left, height, width);
    source: int [N], the image of each box. Returns float32 [N, 3, size, size] in [0, 255]."""
    device = images[0].device
    images = [_dense(im) for im in images]
    numels = np.array([im.numel() for im in images])
    offsets = np.concatenate([[0], np.cumsum(numels)[:-1]])
    strides = np.array([im.stride() for im in images])  # (channel, row, column) per image
    flat = torch.cat([im.as_strided((im.numel(),), (1,)) for im in images])
    boxes = np.asarray(boxes, dtype=np.int64)
    # Per crop: the base offset of each channel, and the row and column strides.
    per_crop = np.concatenate([offsets[source, None] + np.arange(3) * strides[source, :1],
                               strides[source, 1:], boxes], 1)
    per_crop = torch.from_numpy(per_crop).to(device, non_blocking=True)
    taps = np.clip(np.ceil(boxes[:, 2:].max(1) / size), 1, MAX_TAPS).astype(np.int64)
    out = torch.empty((len(boxes), 3, size, size), dtype=torch.float32, device=device)
    for k in np.unique(taps):  # a handful of distinct sampling rates, not one pass per crop
        group = np.flatnonzero(taps == k)
        chunk = max(1, CHUNK_ELEMENTS // (3 * (size * int(k)) ** 2))
        for start in range(0, len(group), chunk):
            rows = torch.from_numpy(group[start:start + chunk]).to(device, non_blocking=True)
            out[rows] = _resample(flat, per_crop[rows], size, int(k))
    return out


def _axis(start: torch.Tensor, length: torch.Tensor, size: int, k: int):
    """Bilinear taps along one axis: the two source indices and the weight of the second, for
    size * k sample points spread evenly over [start, start + length)."""
    t = (torch.arange(size * k, device=start.device, dtype=torch.float32) + 0.5) / k
    pos = start[:, None] + t * (length / size)[:, None] - 0.5
    last = start + length - 1
    pos = torch.minimum(torch.maximum(pos, start[:, None]), last[:, None])
    low = pos.floor()
    weight = pos - low
    low = low.long()
    return low, torch.minimum(low + 1, last.long()[:, None]), weight


def _resample(flat: torch.Tensor, crop: torch.Tensor, size: int, k: int) -> torch.Tensor:
    base, row_stride, col_stride = crop[:, 0:3], crop[:, 3:4], crop[:, 4:5]
    top, left, height, width = crop[:, 5:9].float().unbind(1)
    y0, y1, wy = _axis(top, height, size, k)
    x0, x1, wx = _axis(left, width, size, k)
    base = base[:, :, None, None]
    r0, r1 = (y0 * row_stride)[:, None, :, None], (y1 * row_stride)[:, None, :, None]
    c0, c1 = (x0 * col_stride)[:, None, None, :], (x1 * col_stride)[:, None, None, :]
    wx, wy = wx[:, None, None, :], wy[:, None, :, None]

    def row(r):
        left_tap = flat[base + r + c0].float()
        return torch.lerp(left_tap, flat[base + r + c1].float(), wx)

    upper = row(r0)
    out = torch.lerp(upper, row(r1), wy)
    return F.avg_pool2d(out, k) if k > 1 else out


def decode_and_crop(encoded: Encoded, size: int,
                    device: torch.device) -> tuple[torch.Tensor, np.ndarray, list[Undecodable]]:
    """Decode a batch's JPEGs on `device` (nvjpeg on a GPU, one batched call) and crop their
    views: (float32 [V, E', 3, size, size], the E' entries decoded, the files that failed). A
    batch with an undecodable file is decoded again one file at a time to find it."""
    files = list(torch.split(encoded.data, encoded.lengths.tolist()))
    try:
        images = decode_jpeg(files, mode=ImageReadMode.RGB, device=device)
        ok, errors = np.arange(len(files)), []
    except RuntimeError:
        images, ok, errors = [], [], []
        for i, data in enumerate(files):  # only after a failure: find the bad file
            try:
                images.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                ok.append(i)
            except RuntimeError as e:
                errors.append(Undecodable.from_error(encoded.names[i], e))
        ok = np.asarray(ok, dtype=np.int64)
    views = encoded.boxes.shape[1]
    if not len(ok):
        return torch.zeros((views, 0, 3, size, size), device=device), ok, errors
    boxes = encoded.boxes.numpy()[ok].transpose(1, 0, 2)  # view-major [V, E', 4]
    source = np.tile(np.arange(len(ok)), views)
    crops = crop_resize(images, boxes.reshape(-1, 4), source, size)
    return crops.view(views, len(ok), 3, size, size), ok, errors


class InputPipeline:
    """Batch (uint8 crops or JPEG bytes on the host) -> the students' inputs on `device`: one
    normalised float [B, 3, S, S] per view, flipped, jittered and cut out with the workers'
    draws (Cutout wherever the batch carries holes: the policy drew them)."""

    def __init__(self, device: torch.device, mean, std, size: int, channels_last: bool,
                 flip: bool, jitter: bool):
        self.device, self.size = device, size
        std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std)
        self.shift = -torch.tensor(mean, device=device).view(1, 3, 1, 1) / std
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.flip, self.jitter = flip, jitter

    def __call__(self, batch: Batch, augment: bool = True
                 ) -> tuple[list[torch.Tensor], torch.Tensor, list[Undecodable]]:
        """(inputs per view, labels [B], errors). Rows whose JPEG the device cannot decode are
        left out and listed in `errors` (file, reason), as the workers list theirs in
        `batch.bad`."""
        if batch.inputs is not None:  # the workers ran this already (CPU runs)
            return batch.inputs, batch.labels, []
        x, keep, errors = self._pixels(batch)  # float32 [V * B, 3, S, S] in [0, 255], view-major
        views = batch.flip.shape[1]

        def per_view(t):  # [B, V, ...] on the host -> [V * B, ...] on the device
            t = t if keep is None else t[keep]
            return t.to(self.device, non_blocking=True).transpose(0, 1).reshape(len(x), -1)

        if augment and (self.flip or self.jitter):
            flip_and_jitter_(x, per_view(batch.flip) if self.flip else None,
                             per_view(batch.jitter) if self.jitter else None,
                             per_view(batch.order))
        x = torch.addcmul(self.shift, x, self.scale, out=x)  # x is this call's own tensor
        if augment and batch.holes is not None:  # after normalising: holes hold the mean
            cutout_(x, per_view(batch.holes))
        labels = batch.labels if keep is None else batch.labels[keep]
        # Each student's input is one contiguous slice of the view-major batch.
        return list(x.chunk(views)), labels.to(self.device, non_blocking=True), errors

    def _new_batch(self, shape: tuple[int, int, int, int]) -> torch.Tensor:
        """An empty float32 batch in the pipeline's memory format. In a loader worker it lives
        in shared memory from the start, as default_collate's batches do, so that handing it to
        the training process copies nothing."""
        if self.device.type != "cpu" or get_worker_info() is None:
            return torch.empty(shape, device=self.device, memory_format=self.memory_format)
        n, c, h, w = shape
        flat = torch.empty(0).set_(torch.UntypedStorage._new_shared(4 * n * c * h * w), 0,
                                   (n * c * h * w,), (1,))
        if self.memory_format == torch.channels_last:
            return flat.view(n, h, w, c).permute(0, 3, 1, 2)
        return flat.view(n, c, h, w)

    def _pixels(self, batch: Batch):
        b, v = batch.flip.shape
        s = self.size
        if batch.encoded is None:
            x = self._new_batch((v * b, 3, s, s))
            # converted and made view-major in one pass
            x.unflatten(0, (v, b)).copy_(batch.views.to(self.device, non_blocking=True)
                                         .transpose(0, 1))
            return x, None, []
        enc = batch.encoded
        crops, ok, errors = decode_and_crop(enc, s, self.device)
        pixels = torch.empty((v, b, 3, s, s), device=self.device)
        if len(ok):
            pixels[:, enc.rows[ok].to(self.device)] = crops
        if batch.cpu_rows.numel():
            cpu = batch.views.to(self.device, non_blocking=True).transpose(0, 1)
            pixels[:, batch.cpu_rows.to(self.device)] = cpu.float()
        keep = None
        if errors:
            keep = torch.ones(b, dtype=torch.bool)
            keep[enc.rows] = False
            keep[enc.rows[ok]] = True
            pixels = pixels[:, keep.to(self.device)]
        pixels = pixels.reshape(-1, 3, s, s).contiguous(memory_format=self.memory_format)
        return pixels, keep, errors
