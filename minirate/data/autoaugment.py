"""AutoAugment's CIFAR-10 policy (Cubuk et al., "AutoAugment: Learning Augmentation
Strategies from Data", CVPR 2019), with Pillow image ops.

The policy is 25 sub-policies; each is two (operation, probability, magnitude) steps. For every
image one sub-policy is drawn uniformly, and each of its two steps is applied with its
probability. Magnitudes are on the paper's 0..9 scale, a uniform discretisation of each op's
range (paper, appendix table of operations):

    ShearX/Y      shear factor        [-0.3, 0.3]      m -> 0.3 * m/9, random sign
    TranslateX/Y  shift in pixels     [-150, 150] on 331-pixel images, i.e. a fraction 150/331
                                      of the image side (14.5 px on 32x32), random sign
    Rotate        degrees             [-30, 30]        m -> 30 * m/9, random sign
    Solarize      threshold           [0, 256]         m -> 256 - 256 * m/9 (larger m: stronger)
    Posterize     bits kept           [4, 8]           m -> 8 - round(4 * m/9)
    Contrast, Color, Brightness, Sharpness
                  enhance factor      [0.1, 1.9]       m -> 0.1 + 1.8 * m/9 (1 = unchanged)
    AutoContrast, Invert, Equalize    no magnitude

Geometric ops fill uncovered pixels with grey (128, 128, 128) and use nearest-neighbour
sampling. All randomness (sub-policy choice, whether a step fires, signs) comes from a
`numpy.random.Generator`.
"""
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

FILL = (128, 128, 128)
MAX_MAGNITUDE = 9
TRANSLATE_FRACTION = 150 / 331

# (op, probability, magnitude) pairs, in the paper's order.
CIFAR10_POLICY = (
    (("Invert", 0.1, 7), ("Contrast", 0.2, 6)),
    (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)),
    (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, 8), ("Equalize", 0.9, 2)),
    (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)),
    (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, 5), ("Equalize", 0.5, 1)),
    (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)),
    (("Equalize", 0.3, 7), ("AutoContrast", 0.4, 8)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)),
    (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, 3)),
    (("Equalize", 0.2, 0), ("AutoContrast", 0.6, 0)),
    (("Equalize", 0.2, 8), ("Equalize", 0.6, 4)),
    (("Color", 0.9, 9), ("Equalize", 0.6, 6)),
    (("AutoContrast", 0.8, 4), ("Solarize", 0.2, 8)),
    (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, 3)),
    (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, 2), ("Solarize", 0.8, 3)),
    (("Equalize", 0.8, 8), ("Invert", 0.1, 3)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, 1)),
)


def _signed(value, rng):
    """Half the time negative: the paper's ranges are symmetric around 'no change'."""
    return -value if rng.random() < 0.5 else value


def _affine(img, coeffs):
    # Pillow's AFFINE maps each *output* pixel (x, y) to the input pixel
    # (a*x + b*y + c, d*x + e*y + f).
    return img.transform(img.size, Image.AFFINE, coeffs, resample=Image.NEAREST, fillcolor=FILL)


def shear_x(img, m, rng):
    s = _signed(0.3 * m / MAX_MAGNITUDE, rng)
    cy = img.size[1] / 2  # shear about the centre row so the image does not also shift
    return _affine(img, (1, s, -s * cy, 0, 1, 0))


def shear_y(img, m, rng):
    s = _signed(0.3 * m / MAX_MAGNITUDE, rng)
    cx = img.size[0] / 2
    return _affine(img, (1, 0, 0, s, 1, -s * cx))


def translate_x(img, m, rng):
    t = _signed(TRANSLATE_FRACTION * img.size[0] * m / MAX_MAGNITUDE, rng)
    return _affine(img, (1, 0, t, 0, 1, 0))


def translate_y(img, m, rng):
    t = _signed(TRANSLATE_FRACTION * img.size[1] * m / MAX_MAGNITUDE, rng)
    return _affine(img, (1, 0, 0, 0, 1, t))


def rotate(img, m, rng):
    return img.rotate(_signed(30.0 * m / MAX_MAGNITUDE, rng), resample=Image.NEAREST,
                      fillcolor=FILL)


def auto_contrast(img, m, rng):
    return ImageOps.autocontrast(img)


def invert(img, m, rng):
    return ImageOps.invert(img)


def equalize(img, m, rng):
    return ImageOps.equalize(img)


def solarize(img, m, rng):
    # Pixels >= threshold are inverted; threshold 256 leaves the image alone.
    return ImageOps.solarize(img, int(round(256 - 256 * m / MAX_MAGNITUDE)))


def posterize(img, m, rng):
    return ImageOps.posterize(img, int(8 - round(4 * m / MAX_MAGNITUDE)))


def _enhance(cls):
    def op(img, m, rng):
        return cls(img).enhance(0.1 + 1.8 * m / MAX_MAGNITUDE)
    op.__name__ = cls.__name__.lower()
    return op


OPS = {
    "ShearX": shear_x, "ShearY": shear_y,
    "TranslateX": translate_x, "TranslateY": translate_y,
    "Rotate": rotate,
    "AutoContrast": auto_contrast, "Invert": invert, "Equalize": equalize,
    "Solarize": solarize, "Posterize": posterize,
    "Contrast": _enhance(ImageEnhance.Contrast), "Color": _enhance(ImageEnhance.Color),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
}


def apply_op(x, name, magnitude, rng, ops=None):
    """Apply one named op of `ops` (default OPS) at magnitude 0..9 to a uint8 (H, W, 3) image;
    returns uint8 (H, W, 3)."""
    img = Image.fromarray(np.ascontiguousarray(x, dtype=np.uint8))
    return np.asarray((OPS if ops is None else ops)[name](img, magnitude, rng))


def autoaugment_image(x, rng, policy=CIFAR10_POLICY):
    """One uint8 (H, W, 3) image -> one uint8 (H, W, 3) image under a random sub-policy."""
    sub_policy = policy[rng.integers(len(policy))]
    img = None
    for name, prob, magnitude in sub_policy:
        if rng.random() < prob:
            if img is None:  # skip the Pillow round trip when no step fires
                img = Image.fromarray(np.ascontiguousarray(x, dtype=np.uint8))
            img = OPS[name](img, magnitude, rng)
    return x if img is None else np.asarray(img)


def autoaugment_batch(x, rng, policy=CIFAR10_POLICY):
    """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3), a sub-policy drawn independently per image."""
    out = np.empty_like(x)
    for n in range(len(x)):  # Pillow works one image at a time
        out[n] = autoaugment_image(x[n], rng, policy)
    return out
