import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Real CIFAR-10 images (a subset) that sit beside the repository.
SUBSET_DIR = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "cifar10-subset"))
