"""jAER AEDAT 2.0 files from a DVS128 sensor (CIFAR10-DVS): read, decode, write.

File layout (jAER, "AEDAT 2.0"):
    ASCII header lines, each starting with '#' and ending with '\\r\\n' ('#!AER-DAT2.0' first);
    then N events, each 8 bytes, big-endian:  uint32 address, int32 timestamp (microseconds).

DVS128 address bits (15 used; the sensor is 128 x 128):

    bit  0       polarity bit: 0 = ON (brightness up), 1 = OFF
    bits 1-7     raw x (0..127)
    bits 8-14    raw y (0..127)
    bit  15 up   sync (external input) or special events, not pixels: dropped

jAER shows a DVS128 event at column x = 127 - raw_x, row y = raw_y with polarity ON = 1 - bit 0.
Its DVS128 event extractor uses masks 0xFE >> 1 and 0x7F00 >> 8, type mask 0x01, flips x and
the type, and takes addresses with the sync bit 15 or a special-event bit set as special events;
jAER's dat2mat.m, which the CIFAR10-DVS README points to for reading the files, gives the same
x, y and polarity. SpikingJelly's loader uses the same bit fields (x 0xFE >> 1, y 0x7F00 >> 8,
polarity 0x01 with ON = 1 - bit 0) and then places the event at column 127 - raw_y, row
127 - raw_x, which turns the recordings upright (spikingjelly/datasets/cifar10_dvs.py:130-143);
`cifar10dvs_xy` below does the same. The older SpikingJelly copy that OTTT ships places it at
column 127 - raw_x, row raw_y (OTTT-SNN datasets/cifar10_dvs.py:160-169): a quarter turn of
minirate's frames (events/ottt_transform.py). Tonic does not read these files: it downloads a
re-export of CIFAR10-DVS as AEDAT 4 (figshare file 38023437) and decodes it with the `aedat`
package (tonic/datasets/cifar10dvs.py:33-36, :103; tonic/io.py:35-67), so no DVS128 bit layout
and no flip appear in its code; its orientation is whatever the re-export holds.

Sources: the CIFAR10-DVS README on figshare (jAER format, DVS128 filters); jAER's DVS128 event
extractor (ch/unizh/ini/jaer/chip/retina/DVS128.java); SpikingJelly `datasets/cifar10_dvs.py`;
a Julia AEDAT reader (pol = a & 1, x = (a >> 1) & 0x7F, y = (a >> 8) & 0x7F, ext = bit 15).
"""
import numpy as np

SENSOR_SIZE = 128
HEADER_MAGIC = b"#!AER-DAT2.0"
EVENT_DTYPE = np.dtype([("addr", ">u4"), ("t", ">i4")])     # 8 bytes per event, big-endian


class AedatError(ValueError):
    """Bytes that are not a readable AEDAT file."""


def check_version(data, version):
    """Refuse bytes that are not an AEDAT `version` file ('2.0', '3.1') before any decoding.

    The first line names the format: '#!AER-DAT2.0' or '#!AER-DAT3.1'. An empty file, another
    AEDAT version, or anything else (an image, random bytes) is an AedatError saying which.
    """
    if not data:
        raise AedatError(f"empty file (0 bytes), not an AEDAT {version} recording")
    end = data.find(b"\n", 0, 100)
    first = data[:end if end >= 0 else 100].rstrip()
    if first == b"#!AER-DAT" + version.encode():
        return
    if first.startswith(b"#!AER-DAT"):
        found = first[len(b"#!AER-DAT"):].decode("ascii", "replace")
        raise AedatError(f"an AEDAT {found} file, expected AEDAT {version}")
    raise AedatError(f"not an AEDAT {version} recording: it starts with {data[:12]!r}, not "
                     f"'#!AER-DAT{version}'")


def split_header(data):
    """Offset of the first event: the end of the '#' header lines (as jAER writes them)."""
    pos = 0
    while data.startswith(b"#", pos):
        end = data.find(b"\n", pos)
        if end < 0:
            raise AedatError("header line without an end of line")
        pos = end + 1
    return pos


def read_aedat2(data):
    """AEDAT 2.0 bytes -> (t int64 (N,) microseconds, addr uint32 (N,)).

    Raises AedatError when the first line is not '#!AER-DAT2.0' (check_version) or the payload
    is not a whole number of 8-byte events.
    """
    check_version(data, "2.0")
    start = split_header(data)
    n, rest = divmod(len(data) - start, EVENT_DTYPE.itemsize)
    if rest:
        raise AedatError(f"{len(data) - start} bytes of events is not a multiple of 8 "
                         f"(truncated file?)")
    ev = np.frombuffer(data, EVENT_DTYPE, count=n, offset=start)
    return ev["t"].astype(np.int64), ev["addr"].astype(np.uint32)


def decode_dvs128(addr):
    """DVS128 addresses -> (raw_x, raw_y, on, keep), the raw fields of the table above.

    raw_x, raw_y: uint8 (N,) in [0, 127]; on: uint8 (N,) 1 for ON, 0 for OFF (= 1 - bit 0);
    keep: bool (N,), False for external events (bit 15 or any higher bit set).
    """
    a = np.asarray(addr, np.uint32)
    # uint8 results: with int64 or uint32 ones this took 10x longer (measured 1.5 ms against
    # 0.16 ms for 200,000 events), the time going to first touches of the larger new arrays
    u8 = np.uint8
    return (((a >> 1) & 0x7F).astype(u8), ((a >> 8) & 0x7F).astype(u8),
            ((a & 1) ^ 1).astype(u8), (a >> 15) == 0)


def cifar10dvs_xy(raw_x, raw_y):
    """CIFAR10-DVS orientation: column = 127 - raw_y, row = 127 - raw_x (upright images)."""
    return SENSOR_SIZE - 1 - raw_y, SENSOR_SIZE - 1 - raw_x


def encode_dvs128(raw_x, raw_y, on):
    """Inverse of decode_dvs128 for pixel events: the uint32 address of each event."""
    return ((np.asarray(raw_y, np.uint32) << 8) | (np.asarray(raw_x, np.uint32) << 1)
            | (1 - np.asarray(on, np.uint32)))


def write_aedat2(path, t, addr, header_lines=("# a raw AE data file",)):
    """Write events in AEDAT 2.0 (header, then big-endian address/timestamp pairs)."""
    ev = np.empty(len(t), EVENT_DTYPE)
    ev["addr"], ev["t"] = addr, t
    head = b"".join(line.encode() + b"\r\n" for line in (HEADER_MAGIC.decode(), *header_lines))
    with open(path, "wb") as f:
        f.write(head + ev.tobytes())
