"""Resumable, checksummed download of the CIFAR10-DVS class archives (figshare).

Each class archive goes to `<class>.zip.part`; an interrupted download continues from the bytes
already there with an HTTP Range request (a server that ignores the range sends the whole file
again, and it is rewritten from the start). When complete, its MD5 is checked and the file is
renamed to `<class>.zip`, which the reader uses in place. An archive already present with the
right MD5 is not fetched again. DVS128 Gesture has no direct public URL (an IBM Box folder):
`datasets.GESTURE_HINT` says where to put it.

Addresses and MD5s: the figshare record of CIFAR10-DVS (article 4724671), as listed by
SpikingJelly and Tonic.
"""
import hashlib
import os
import urllib.error
import urllib.request

from ..cifar import DatasetError
from .datasets import CIFAR10DVS_CLASSES, FOLDERS

FIGSHARE = "https://ndownloader.figshare.com/files/"
CIFAR10DVS_FILES = {     # class -> (figshare file id, MD5 of <class>.zip)
    "airplane": (7712788, "0afd5c4bf9ae06af762a77b180354fdd"),
    "automobile": (7712791, "8438dfeba3bc970c94962d995b1b9bdd"),
    "bird": (7712794, "a9c207c91c55b9dc2002dc21c684d785"),
    "cat": (7712812, "52c63c677c2b15fa5146a8daf4d56687"),
    "deer": (7712815, "b6bf21f6c04d21ba4e23fc3e36c8a4a3"),
    "dog": (7712818, "f379ebdf6703d16e0a690782e62639c3"),
    "frog": (7712842, "cad6ed91214b1c7388a5f6ee56d08803"),
    "horse": (7712851, "e7cbbf77bec584ffbf913f00e682782a"),
    "ship": (7712836, "41c7bd7d6b251be82557c6cce9a7d5c9"),
    "truck": (7712839, "89f3922fd147d9aeff89e76a2b0b70a7"),
}


def md5_of(path):
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_resumable(url, path, md5, timeout=60.0, progress=None):
    """Download url to path via path + '.part', resuming it; check the MD5; rename into place."""
    if os.path.isfile(path) and md5_of(path) == md5:
        return path
    part = path + ".part"
    have = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resumed = have and getattr(resp, "status", 200) == 206
            with open(part, "ab" if resumed else "wb") as out:
                got = have if resumed else 0
                while True:
                    chunk = resp.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
                    got += len(chunk)
                    if progress:
                        progress(got)
    except urllib.error.HTTPError as e:
        if e.code != 416:              # 416: the range starts at the end, nothing left to fetch
            raise DatasetError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DatasetError(f"{url}: {getattr(e, 'reason', None) or e} (run again to resume)") \
            from None
    got_md5 = md5_of(part)
    if got_md5 != md5:
        os.remove(part)
        raise DatasetError(f"MD5 of {url} is {got_md5}, expected {md5}; the partial file was "
                           f"removed, run again")
    os.replace(part, path)
    return path


def download_cifar10dvs(data_dir, files=None, timeout=60.0):
    """All 10 class archives into data_dir/CIFAR10-DVS/. `files`: override {class: (url, md5)}."""
    root = os.path.join(data_dir, FOLDERS["cifar10dvs"])
    os.makedirs(root, exist_ok=True)
    files = files or {c: (FIGSHARE + str(i), m) for c, (i, m) in CIFAR10DVS_FILES.items()}
    for cls in CIFAR10DVS_CLASSES:
        url, md5 = files[cls]
        if os.path.isdir(os.path.join(root, cls)):
            continue                                   # already extracted by hand
        print(f"{cls}.zip <- {url}", flush=True)
        fetch_resumable(url, os.path.join(root, cls + ".zip"), md5, timeout)
    return root
