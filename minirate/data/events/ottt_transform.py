"""OTTT's CIFAR10-DVS frame transform (Xiao et al., NeurIPS 2022), as its authors' code runs it:
`EventLoader(..., pipeline="ottt")` applies it to every batch, training and test.

Their train_cifar10dvs.py:98-112 composes, per sample, on its list of T frames (2, 128, 128):

    train:  ToPILImage -> Resize(48) -> Padding(4) -> RandomCrop(48, consistent=True)
            -> ToTensor -> Normalize((0.2728, 0.1295), (0.2225, 0.1290))
    test:   ToPILImage -> Resize(48) -> ToTensor -> Normalize(same)

with no flip and no roll. What each step does to event counts (their datasets/augmentation.py
wraps torchvision's per-image transforms over the list, :373-392):

  1. ToPILImage on a float tensor multiplies by 255 and casts to uint8 (torchvision's
     to_pil_image: `pic.mul(255).byte()`); PyTorch casts float -> uint8 through int64
     (c10/util/TypeCast.h), so a count c becomes int(255 c) mod 256: 1 -> 255, 2 -> 254,
     3 -> 253, ... The frames are raw counts (`normalization=None`, :115-118).
     Two channels make a Pillow "LA" image: channel 0 (OFF) is L, channel 1 (ON) is alpha.
  2. Resize(48): Pillow bilinear (antialiased) on the LA image; Pillow resizes LA with the L
     channel premultiplied by alpha and divides it back afterwards, so where the ON byte is 0
     the OFF channel is lost. This module calls Pillow the same way, so it reproduces that.
  3. Padding(4): zeros on every side (:13-18, ImageOps.expand fill 0).
  4. RandomCrop(48, consistent=True): one offset (x1, y1), each uniform in {0, ..., 8},
     for all T frames of the sample (:99-118).
  5. ToTensor (/255) and Normalize per channel: (v / 255 - mean[c]) / std[c].

Their frames come from the SpikingJelly version they ship (datasets/cifar10_dvs.py:160-169,
dataset_utils.py:168-222): x = 127 - raw_x, y = raw_y, so frame[row, col] =
minirate's frame[col, 127 - row], a quarter turn (np.rot90) of minirate's upright frames;
`reorient=True` turns them the same way. The split is by number, the first 900 of each class
for training (cifar10_dvs.py:252-263), minirate's '9:1' split.

To be exact the HDF5 cache must hold 128 x 128 counts (frame_size=128): with a cache at 48 the
resize is the identity and step 1 sees minirate's bilinear averages instead of counts.
"""
import numpy as np
from PIL import Image

OTTT_MEAN = (0.2728, 0.1295)      # train_cifar10dvs.py:104, :111 (OFF, ON)
OTTT_STD = (0.2225, 0.1290)
OTTT_SIZE = 48
OTTT_PADDING = 4


def to_pil_bytes(x):
    """Float counts -> the uint8 bytes torchvision's ToPILImage makes of them:
    trunc(255 x) in float32, then modulo 256 (the int64 -> uint8 cast)."""
    v = np.trunc(np.asarray(x, np.float32) * np.float32(255.0)).astype(np.int64)
    return (v % 256).astype(np.uint8)


def pil_resize_la(frames_u8, size):
    """uint8 (..., 2, H, W) -> uint8 (..., 2, size, size): each frame as a Pillow LA image
    (L = channel 0, alpha = channel 1), resized bilinearly by Pillow."""
    lead = frames_u8.shape[:-3]
    flat = frames_u8.reshape((-1,) + frames_u8.shape[-3:])            # (K, 2, H, W)
    out = np.empty((len(flat), 2, size, size), np.uint8)
    for k, f in enumerate(flat):                                      # Pillow: one image a call
        img = Image.fromarray(np.ascontiguousarray(f.transpose(1, 2, 0)))   # (H, W, 2): "LA"
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        out[k] = np.asarray(img).transpose(2, 0, 1)                   # (size, size, 2) -> (2, ...)
    return out.reshape(lead + (2, size, size))


def ottt_frames(x, rng=None, train=True, size=OTTT_SIZE, padding=OTTT_PADDING, reorient=True):
    """OTTT's transform of a batch of event-count frames.

    x: float (B, T, 2, H, W) counts (H = W = 128 for their exact pipeline).
    rng: numpy Generator for the crop offsets (train only).
    Returns float32 (B, T, 2, size, size): (byte / 255 - mean[c]) / std[c].
    """
    x = np.asarray(x)
    if reorient:
        x = np.rot90(x, 1, axes=(-2, -1))                # their orientation, see the docstring
    v = pil_resize_la(to_pil_bytes(x), size)             # (B, T, 2, size, size) uint8
    if train:
        B = len(v)
        p = padding
        v_pad = np.zeros(v.shape[:-2] + (size + 2 * p, size + 2 * p), np.uint8)
        v_pad[..., p:p + size, p:p + size] = v
        x1 = rng.integers(0, 2 * p + 1, size=B)          # randint(0, w - tw), inclusive
        y1 = rng.integers(0, 2 * p + 1, size=B)
        v = np.stack([v_pad[b, ..., y1[b]:y1[b] + size, x1[b]:x1[b] + size] for b in range(B)])
    mean = np.asarray(OTTT_MEAN, np.float32)[:, None, None]         # (2, 1, 1)
    std = np.asarray(OTTT_STD, np.float32)[:, None, None]
    return ((v.astype(np.float32) / np.float32(255.0) - mean) / std).astype(np.float32)
