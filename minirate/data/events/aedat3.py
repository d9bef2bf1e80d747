"""AEDAT 3.1 files (iniVation cAER / jAER 3.x, DVS128 Gesture): polarity events, read and write.

File layout (little-endian throughout):
    ASCII header lines starting with '#': '#!AER-DAT3.1' first, '#!END-HEADER\\r\\n' last;
    then packets, each a 28-byte header followed by eventCapacity * eventSize bytes:

        int16 eventType     1 = polarity events (others: special, frame, IMU, ...: skipped)
        int16 eventSource   int32 eventSize (bytes per event, 8 for polarity)
        int32 eventTSOffset (byte offset of the timestamp inside an event, 4 for polarity)
        int32 eventTSOverflow  int32 eventCapacity  int32 eventNumber  int32 eventValid

    A polarity event is uint32 data, int32 timestamp (microseconds), with

        bit 0 valid mark (1 = valid; invalid events are skipped)   bit 1 polarity (1 = ON)
        bits 2-16 y                                                bits 17-31 x

    and the full 64-bit time is (eventTSOverflow << 31) | timestamp.

Source: iniVation's AEDAT 3.1 format documentation (packet header and polarity event tables).
The loop runs over packets (a few thousand per recording), never over events.
"""
import numpy as np

from .aedat2 import AedatError, check_version

PACKET_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"),
                          ("ts_offset", "<i4"), ("ts_overflow", "<i4"), ("capacity", "<i4"),
                          ("number", "<i4"), ("valid", "<i4")])          # 28 bytes
POLARITY_EVENT = np.dtype([("data", "<u4"), ("t", "<i4")])               # 8 bytes
POLARITY_TYPE = 1
END_HEADER = b"#!END-HEADER\r\n"


def _events_start(data):
    check_version(data, "3.1")
    end = data.find(END_HEADER)
    if end < 0:
        raise AedatError("AEDAT 3 header has no '#!END-HEADER' line")
    return end + len(END_HEADER)


def read_aedat3_polarity(data):
    """AEDAT 3.1 bytes -> (t int64, x uint16, y uint16, on uint8), valid polarity events only."""
    pos = _events_start(data)
    chunks = []
    while pos < len(data):
        if pos + PACKET_HEADER.itemsize > len(data):
            raise AedatError(f"truncated packet header at byte {pos}")
        h = np.frombuffer(data, PACKET_HEADER, count=1, offset=pos)[0]
        size, capacity = int(h["size"]), int(h["capacity"])
        body = pos + PACKET_HEADER.itemsize
        if h["type"] < 0:
            raise AedatError(f"packet at byte {pos} has eventType {h['type']} (damaged)")
        if size <= 0 or capacity < 0 or body + size * capacity > len(data):
            raise AedatError(f"packet at byte {pos} runs past the end of the file "
                             f"(truncated or damaged)")
        if h["type"] == POLARITY_TYPE:
            if not 0 <= h["number"] <= capacity:
                raise AedatError(f"packet at byte {pos} has eventNumber {h['number']} outside "
                                 f"[0, eventCapacity {capacity}] (damaged)")
            if size != POLARITY_EVENT.itemsize or h["ts_offset"] != 4:
                raise AedatError(f"polarity packet at byte {pos} has {size}-byte events with "
                                 f"the timestamp at byte {h['ts_offset']} (expected 8 and 4)")
            ev = np.frombuffer(data, POLARITY_EVENT, count=int(h["number"]), offset=body)
            chunks.append((ev, int(h["ts_overflow"])))
        pos = body + size * capacity
    if not chunks:
        z = np.zeros(0, np.int64)
        return z, z, z, z
    d = np.concatenate([ev["data"] for ev, _ in chunks])                 # uint32
    t = np.concatenate([ev["t"] for ev, _ in chunks]).astype(np.int64)
    if any(ovf for _, ovf in chunks):
        t |= np.repeat(np.array([ovf for _, ovf in chunks], np.int64) << 31,
                       [len(ev) for ev, _ in chunks])
    valid = (d & 1) == 1
    if not valid.all():
        d, t = d[valid], t[valid]
    # narrow results (x, y < 2^15): new large arrays cost more to touch than to compute
    return (t, ((d >> 17) & 0x7FFF).astype(np.uint16), ((d >> 2) & 0x7FFF).astype(np.uint16),
            ((d >> 1) & 1).astype(np.uint8))


def write_aedat3_polarity(path, t, x, y, on, events_per_packet=4096, extra_packet=True):
    """Write polarity events as AEDAT 3.1 (what a DVS128 Gesture recording holds).

    t must fit in 31 bits per packet overflow epoch: packets carry t >> 31 as eventTSOverflow.
    With `extra_packet` a special-event packet (type 0) goes first, as cAER writes one.
    """
    t = np.asarray(t, np.int64)
    data = ((np.asarray(x, np.uint32) << 17) | (np.asarray(y, np.uint32) << 2)
            | (np.asarray(on, np.uint32) << 1) | np.uint32(1))
    out = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n", END_HEADER]
    if extra_packet:
        out.append(_packet(0, np.zeros(1, POLARITY_EVENT), 0))
    for s in range(0, len(t), events_per_packet):
        ts = t[s:s + events_per_packet]
        for ovf in np.unique(ts >> 31):        # one packet per overflow epoch
            m = (ts >> 31) == ovf
            ev = np.empty(int(m.sum()), POLARITY_EVENT)
            ev["data"], ev["t"] = data[s:s + events_per_packet][m], ts[m] & 0x7FFFFFFF
            out.append(_packet(POLARITY_TYPE, ev, int(ovf)))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def _packet(kind, ev, ts_overflow):
    h = np.zeros(1, PACKET_HEADER)
    h["type"], h["source"], h["size"], h["ts_offset"] = kind, 1, ev.dtype.itemsize, 4
    h["ts_overflow"] = ts_overflow
    h["capacity"] = h["number"] = h["valid"] = len(ev)
    return h.tobytes() + ev.tobytes()
