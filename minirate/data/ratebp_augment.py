"""The CIFAR training pipeline of rate-based backpropagation (Yu et al., NeurIPS 2024), as its
authors' code runs it: `augment_batch(..., pipeline="ratebp")` and `normalize(...,
pipeline="ratebp")` in augment.py come here.

Training transform, in this order (their util/data.py:51-66):

    pad 4 + random 32x32 crop -> random flip -> [AutoAugment, their policy] -> /255
        -> [Cutout 16] -> normalise

so AutoAugment sees the *cropped* 32x32 image (zero strips from the padding included, not the
padded 40x40 image), and Cutout zeroes pixels in [0, 1] before normalising: the hole is black,
(0 - mean) / std after normalisation, where minirate's default pipeline cuts the normalised
image (the mean colour). The same CIFAR-10 policy serves CIFAR-100 (:52-53). Their recipe
always uses both (experiment/cifar/config/config.py:15-16, `default=True` with `store_true`).
Test images: /255 -> normalise (util/data.py:68-70).

Normalisation (util/data.py:58 and :61): the CIFAR-10 mean is minirate's, the std is not
(minirate: 0.2470, 0.2435, 0.2616); CIFAR-100's differ in the fourth digit:

    CIFAR-10    mean (0.4914, 0.4822, 0.4465)   std (0.2023, 0.1994, 0.2010)
    CIFAR-100   mean (0.5071, 0.4867, 0.4408)   std (0.2675, 0.2565, 0.2761)

Their CIFAR10Policy (util/image_augment.py:53-179) has the 25 sub-policies of
autoaugment.py, drawn uniformly, each step firing with its probability, but:

    sub-policy 16       (Equalize 0.2, 8), (Equalize 0.8, 4), counting from 0: 0.8 where
                        autoaugment.py (the paper's table) has 0.6 (:88)
    Color, Contrast,    factor 1 +- 0.1 m, random sign (:116-121, :150-158): m = 9 gives 0.1 or
      Brightness,         1.9; the paper's 0.1 + 1.8 m/9 maps m = 0 to 0.1, not to "unchanged"
      Sharpness
    ShearX / ShearY     factor 0.3 m/9, random sign, about the top-left corner (no centring
                        offset) and bicubic resampling (:132-139)
    Rotate              30 m/9 degrees, always counter-clockwise (no sign, :127-129, :148),
                        nearest, grey (128) where the rotated image leaves the frame
    Solarize            threshold linspace(256, 0, 10)[m], a float: pixels >= 199.1 (m = 2)
                        are inverted, i.e. from 200 on (:118, :152)

and where they coincide this module uses autoaugment.py's ops: TranslateX/Y (a fraction
150/331 m/9 of the side, random sign, nearest, grey fill (:140-147)), Posterize (bits
round(linspace(8, 4, 10))[m] = 8 - round(4 m/9), :117), AutoContrast, Equalize, Invert.
The fill colour of every geometric op is (128, 128, 128) (:67).

Randomness: a `numpy.random.Generator` (theirs: Python's `random` and NumPy's global state),
so the draws are theirs in distribution, not in sequence.
"""
import numpy as np
from PIL import Image, ImageEnhance

from minirate.data.augment import cutout, random_crop, random_flip
from minirate.data import autoaugment
from minirate.data.autoaugment import CIFAR10_POLICY, FILL, OPS

RATEBP_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar10-sample": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),   # as CIFAR-10
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}

# autoaugment.py's table (the paper's) with one probability changed (image_augment.py:88).
RATEBP_POLICY = tuple(((("Equalize", 0.2, 8), ("Equalize", 0.8, 4)) if i == 16 else sub)
                      for i, sub in enumerate(CIFAR10_POLICY))

# Magnitude tables, index m = 0..9 (image_augment.py:111-121).
SHEAR = np.linspace(0, 0.3, 10)
ROTATE = np.linspace(0, 30, 10)
ENHANCE = np.linspace(0.0, 0.9, 10)
SOLARIZE = np.linspace(256, 0, 10)


def _sign(rng):
    return -1.0 if rng.random() < 0.5 else 1.0


def shear_x(img, m, rng):
    """out(x, y) = in(x + s y, y): row 0 stays, row y moves by -s y; s = +-SHEAR[m], bicubic."""
    s = _sign(rng) * SHEAR[m]
    return img.transform(img.size, Image.AFFINE, (1, s, 0, 0, 1, 0), resample=Image.BICUBIC,
                         fillcolor=FILL)


def shear_y(img, m, rng):
    """out(x, y) = in(x, y + s x): column 0 stays; s = +-SHEAR[m], bicubic."""
    s = _sign(rng) * SHEAR[m]
    return img.transform(img.size, Image.AFFINE, (1, 0, 0, s, 1, 0), resample=Image.BICUBIC,
                         fillcolor=FILL)


def rotate(img, m, rng):
    """Counter-clockwise by ROTATE[m] degrees about the centre, nearest, grey outside.

    Their route (image_augment.py:127-129): rotate an RGBA copy (outside pixels get alpha 0),
    then composite over grey using the rotated alpha as the mask; with nearest sampling the
    alpha is 0 or 255, so this is a rotation with a grey fill.
    """
    rot = img.convert("RGBA").rotate(float(ROTATE[m]))
    grey = Image.new("RGBA", rot.size, FILL + (128,))
    return Image.composite(rot, grey, rot).convert(img.mode)


def solarize(img, m, rng):
    """Invert every pixel v >= SOLARIZE[m] (a float threshold: m = 2 inverts 200..255)."""
    threshold = float(SOLARIZE[m])
    lut = [v if v < threshold else 255 - v for v in range(256)]
    return img.point(lut * len(img.getbands()))


def _enhance(cls):
    def op(img, m, rng):
        return cls(img).enhance(1.0 + _sign(rng) * ENHANCE[m])
    op.__name__ = cls.__name__.lower()
    return op


RATEBP_OPS = dict(OPS)
RATEBP_OPS.update({
    "ShearX": shear_x, "ShearY": shear_y, "Rotate": rotate, "Solarize": solarize,
    "Contrast": _enhance(ImageEnhance.Contrast), "Color": _enhance(ImageEnhance.Color),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
})


def apply_op(x, name, magnitude, rng):
    """One of their ops at magnitude 0..9 on a uint8 (H, W, 3) image; returns uint8 (H, W, 3)."""
    return autoaugment.apply_op(x, name, magnitude, rng, RATEBP_OPS)


def ratebp_autoaugment_batch(x, rng, policy=RATEBP_POLICY):
    """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3): per image, one sub-policy drawn uniformly,
    each of its two steps applied with its probability (image_augment.py:100-102, :174-179)."""
    out = np.empty_like(x)
    for n in range(len(x)):               # Pillow works one image at a time
        name_p_m = policy[rng.integers(len(policy))]
        img = None
        for name, prob, magnitude in name_p_m:
            if rng.random() < prob:
                if img is None:
                    img = Image.fromarray(np.ascontiguousarray(x[n], dtype=np.uint8))
                img = RATEBP_OPS[name](img, magnitude, rng)
        out[n] = x[n] if img is None else np.asarray(img)
    return out


def _stats(dataset):
    if dataset not in RATEBP_STATS:
        raise ValueError(f"no rate-BP normalisation statistics for {dataset!r}; "
                         f"choose one of {', '.join(RATEBP_STATS)}")
    return (np.asarray(v, dtype=np.float32)[:, None, None] for v in RATEBP_STATS[dataset])


def to_unit(x):
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] (torchvision's ToTensor)."""
    return x.transpose(0, 3, 1, 2).astype(np.float32, order="C") / np.float32(255.0)


def standardise(y, dataset):
    """float32 (N, C, H, W) in [0, 1] -> (y - mean[c]) / std[c] with their constants."""
    mean, std = _stats(dataset)
    return (y - mean) / std


def ratebp_normalize(x, dataset="cifar10"):
    """Their test transform: uint8 (N, H, W, C) or (H, W, C) -> float32 (N, C, H, W) or
    (C, H, W), y = (x / 255 - mean[c]) / std[c]."""
    x = np.asarray(x)
    single = x.ndim == 3
    y = standardise(to_unit(x[None] if single else x), dataset)
    return y[0] if single else y


def ratebp_augment_batch(x, rng, dataset="cifar10", crop=True, flip=True, cutout_size=0,
                         autoaugment=False):
    """Their training transform of a uint8 (N, H, W, 3) batch -> float32 (N, 3, H, W).

    crop -> flip -> AutoAugment (their policy) -> /255 -> Cutout (black hole) -> normalise.
    Their published recipe is autoaugment=True, cutout_size=16.
    """
    _stats(dataset)                          # an unknown data set fails before any work
    if crop:
        x = random_crop(x, rng)
    if flip:
        x = random_flip(x, rng)
    if autoaugment:
        x = ratebp_autoaugment_batch(x, rng)
    y = to_unit(x)
    if cutout_size:
        # Their hole spans [c - L//2, c + L//2) (image_augment.py:39-44): L for an even L, one
        # pixel less for an odd one; minirate's cutout spans [c - s//2, c - s//2 + s).
        y = cutout(y, rng, 2 * (cutout_size // 2))   # zeros in [0, 1]: a black square
    return standardise(y, dataset)
