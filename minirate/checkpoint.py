"""Checkpoints and the JSON Lines training log, written so that a crash never leaves a broken file.

A checkpoint is ONE .npz archive: every array under its own name, plus the metadata (resolved
config, epoch, step, metrics) as UTF-8 JSON bytes in a uint8 array under the reserved name
`__meta__`. Saving writes a temporary file beside the target, flushes and fsyncs it, renames it
over the target with os.replace (atomic on POSIX) and fsyncs the directory so the rename itself
reaches the disk. Whatever fails before the rename, the previous checkpoint stays as it was and
the temporary file is removed. Loading reads with allow_pickle=False and turns every way a file
can be wrong into a one-line CheckpointError.

The log holds one JSON object per line. Each line goes to the file in a single os.write on an
O_APPEND descriptor, so a killed run leaves at most one torn line, always the last one:
`read_jsonl` ignores it and the next `append_jsonl` cuts it off before writing.
"""
import json
import os
import secrets
import zipfile

import numpy as np

from .backend import to_numpy

META_KEY = "__meta__"
_ZIP_MAGIC = b"PK\x03\x04"  # an .npz is a zip archive of .npy files


class CheckpointError(Exception):
    """A checkpoint or log that cannot be written or read. The message is one line."""


# -- checkpoints --------------------------------------------------------------------------
def save_checkpoint(path, arrays, meta):
    """Write `arrays` ({name: array}) and `meta` (a JSON-serialisable dict) to one .npz at `path`.

    Atomic: temporary file in the same directory -> flush -> fsync -> os.replace -> fsync of the
    directory. Raises CheckpointError on any failure; the file at `path` is then the previous
    checkpoint (or absent), and no temporary file is left behind. Arrays may be NumPy or CuPy.
    """
    path = os.fspath(path)
    bad = [k for k in arrays if not isinstance(k, str) or k == META_KEY]
    if bad:
        raise CheckpointError(f"cannot save checkpoint {path}: array names must be strings "
                              f"other than {META_KEY!r}, got {bad[:5]}")
    try:
        meta_bytes = _dumps(meta).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save checkpoint {path}: "
                              f"meta is not JSON-serialisable ({_one_line(e)})") from e

    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory,
                       f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    created = False
    try:
        # O_EXCL: never write into someone else's file; mode 0o666 lets the umask decide, as open().
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        created = True
        with open(fd, "wb") as f:
            _write_npz(f, arrays, meta_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        created = False  # the temporary file is now the checkpoint
    except BaseException as e:
        if created:
            try:
                os.remove(tmp)
            except OSError:
                pass
        if isinstance(e, CheckpointError) or not isinstance(e, Exception):
            raise  # KeyboardInterrupt and friends go on up, after the cleanup
        raise CheckpointError(f"cannot save checkpoint {path}: {_reason(e)}") from e

    try:
        _fsync_dir(directory)
    except OSError as e:
        raise CheckpointError(f"checkpoint {path} was written but its directory could not be "
                              f"synced to disk: {_reason(e)}") from e


def load_checkpoint(path):
    """Read a checkpoint written by `save_checkpoint`: returns (arrays: {name: np.ndarray}, meta).

    Raises CheckpointError (one line) for a missing file, a file that is not an .npz archive, a
    truncated or corrupt archive, an .npz without `__meta__` (not a minirate checkpoint) and
    metadata that is not a JSON object.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_ZIP_MAGIC))
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(e)}") from e
    if head != _ZIP_MAGIC:
        what = "the file is empty" if not head else f"it starts with {head!r}"
        raise CheckpointError(f"checkpoint {path} is not an .npz archive ({what})")

    try:
        # np.load reads members lazily, so everything is read inside this try: a bad CRC or a
        # short member shows up only when that array is read.
        with np.load(path, allow_pickle=False) as data:
            if META_KEY not in data.files:
                raise CheckpointError(f"not a minirate checkpoint: {path} is an .npz without "
                                      f"a {META_KEY!r} entry")
            arrays = {k: data[k] for k in data.files}
        # NpzFile hands back a member that is not an .npy file as raw bytes
        odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
        if odd:
            raise ValueError(f"member {odd[0]!r} is not an .npy array")
    except CheckpointError:
        raise
    except Exception as e:  # BadZipFile, ValueError, OSError, EOFError, zlib.error, ...
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {_reason(e)}") from e
    meta_arr = arrays.pop(META_KEY)

    try:
        if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
            raise ValueError(f"expected 1-d uint8 bytes, found {meta_arr.dtype} {meta_arr.shape}")
        meta = json.loads(meta_arr.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected a JSON object, found {type(meta).__name__}")
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {_reason(e)}") from e
    return arrays, meta


def first_non_finite(arrays):
    """The name of the first floating-point array in `arrays` ({name: array}, NumPy or CuPy)
    that holds a NaN or an infinity, or None when every value is finite."""
    for name, a in arrays.items():
        if getattr(a, "dtype", None) is not None and a.dtype.kind in "fc" and a.size:
            with np.errstate(invalid="ignore"):
                finite = bool(((a - a) == 0).all())     # x - x is 0 exactly when x is finite
            if not finite:
                return name
    return None


def _write_npz(f, arrays, meta_bytes):
    """The .npz layout np.savez writes (one '<name>.npy' member per array, stored uncompressed),
    done by hand so that array names like 'file' cannot collide with np.savez's arguments."""
    entries = list(arrays.items()) + [(META_KEY, np.frombuffer(meta_bytes, dtype=np.uint8))]
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, value in entries:
            # force_zip64: the member size is unknown when writing starts and may exceed 2 GiB.
            with zf.open(name + ".npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(to_numpy(value)), allow_pickle=False)


def _fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- JSON Lines log -----------------------------------------------------------------------
def append_jsonl(path, record):
    """Append `record` (a JSON-serialisable dict) as one line to `path`, then fsync.

    The whole line is one os.write to an O_APPEND descriptor, so it lands after everything
    already in the file, in one piece or (killed mid-write, disk full) as a torn last line.
    A torn last line left by an earlier run is cut off first, so it never ends up mid-file.
    Raises CheckpointError if the record cannot be serialised or written.
    """
    path = os.fspath(path)
    try:
        line = (_dumps(record) + "\n").encode("utf-8")
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot append to log {path}: "
                              f"record is not JSON-serialisable ({_one_line(e)})") from e
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            _drop_torn_tail(fd)
            n = os.write(fd, line)
            if n != len(line):  # a short write (full disk): take the partial line back out
                _drop_torn_tail(fd)
                raise OSError(f"short write, {n} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CheckpointError(f"cannot append to log {path}: {_reason(e)}") from e


def section(arrays, name):
    """The arrays of one part of a training checkpoint ('model' or 'optim'), under the names
    that part's state dict uses: {"model/conv.weight": a} -> {"conv.weight": a}."""
    prefix = name + "/"
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def read_jsonl(path):
    """All records (dicts) of a JSON Lines log, in order. A torn last line (no final newline) is
    ignored; any other line that is not a JSON object raises CheckpointError naming its number."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read log {path}: {_reason(e)}") from e
    return [record for _, record in jsonl_records(data, path)]


def jsonl_records(data, path):
    """[(line number, record)] of the complete lines of a JSON Lines log's bytes `data`: every
    complete record ends in b"\n", whatever follows the last newline is a torn record (left
    out). A line that is not a JSON object raises CheckpointError naming `path` and its number."""
    records = []
    for lineno, raw in enumerate(data.split(b"\n")[:-1], start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except ValueError as e:
            raise CheckpointError(f"log {path} line {lineno} is not valid JSON: "
                                  f"{_one_line(e)}") from e
        if not isinstance(record, dict):
            raise CheckpointError(f"log {path} line {lineno} is not a JSON object")
        records.append((lineno, record))
    return records


def _drop_torn_tail(fd):
    """Truncate the file after its last newline, if anything follows it (a torn record)."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    end = size
    while end > 0:  # search backwards in blocks, the log may be long
        start = max(0, end - (1 << 16))
        i = os.pread(fd, end - start, start).rfind(b"\n")
        if i >= 0:
            os.ftruncate(fd, start + i + 1)
            return
        end = start
    os.ftruncate(fd, 0)  # a single torn line and nothing before it


# -- helpers ------------------------------------------------------------------------------
def _dumps(obj):
    """One-line JSON; NumPy/CuPy scalars and arrays become Python numbers and lists."""
    return json.dumps(obj, default=_json_default)


def _json_default(obj):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _one_line(e):
    return " ".join(str(e).split()) or type(e).__name__


def _reason(e):
    if isinstance(e, OSError) and e.strerror:
        return e.strerror  # "No space left on device", without the temporary file's name
    return f"{type(e).__name__}: {_one_line(e)}"
