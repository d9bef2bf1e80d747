import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """The bundled real CIFAR-10 sample written out in the published 'cifar-10-batches-py'
    layout, for tests of the pickle reader and of train.py's --data-dir on real images."""
    from minirate.data.cifar import load_cifar, write_cifar10_folder
    x_train, y_train, x_test, y_test, classes = load_cifar("cifar10-sample", None)
    return write_cifar10_folder(str(tmp_path_factory.mktemp("sample")), x_train, y_train,
                                x_test, y_test, classes, "sample")


# -- the array module: numpy always, cupy when a GPU is usable --------------------------------
def _gpu_unusable():
    """None when CuPy and a GPU are usable, else the reason they are not (for the skip)."""
    from minirate import backend
    try:
        backend.get_xp("cuda")
    except backend.DeviceError as e:
        return str(e)
    return None


@pytest.fixture(params=["numpy", "cupy", "strict"])
def xp(request):
    """The array module a test runs on: numpy, cupy (skipped, saying why, without a GPU), and
    strict: the host-memory stand-in for CuPy (tests/strict_cupy), which refuses whatever CuPy
    refuses, so that every op's CuPy path is exercised on any machine.

    Tests take their data from NumPy generators and move it with `xp.asarray`; results come back
    for comparison through `minirate.backend.to_numpy`.
    """
    if request.param == "numpy":
        import numpy
        return numpy
    if request.param == "strict":
        from tests.strict_cupy import register
        return register()
    reason = _gpu_unusable()
    if reason is not None:
        pytest.skip(f"cupy: {reason}")
    from minirate import backend
    return backend.get_xp("cuda")
