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
