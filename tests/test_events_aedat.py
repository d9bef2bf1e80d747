"""AEDAT 2.0 (DVS128 addresses) and AEDAT 3.1 (polarity packets) against bytes built by hand
from the format tables, plus round trips through the writers and damaged files."""
import struct

import numpy as np
import pytest

from minirate.data.events.aedat2 import (AedatError, cifar10dvs_xy, decode_dvs128, read_aedat2,
                                         write_aedat2)
from minirate.data.events.aedat3 import read_aedat3_polarity, write_aedat3_polarity


def test_aedat2_bit_layout_by_hand():
    # (address, timestamp) pairs, big-endian: raw x 3, raw y 5, bit 0 = 1 (OFF) ...
    events = [(5 << 8 | 3 << 1 | 1, 10),
              (127 << 8 | 0 << 1 | 0, 20),           # raw y 127, raw x 0, ON
              (0 << 8 | 127 << 1 | 0, 30),           # raw y 0, raw x 127, ON
              (1 << 15 | 9 << 8 | 9 << 1, 35),       # external event (bit 15): dropped
              (64 << 8 | 17 << 1 | 1, -1 + 2 ** 31)]
    data = b"#!AER-DAT2.0\r\n# created by hand\r\n" + b"".join(
        struct.pack(">Ii", a, t) for a, t in events)
    t, addr = read_aedat2(data)
    assert t.tolist() == [10, 20, 30, 35, 2 ** 31 - 1]
    raw_x, raw_y, on, keep = decode_dvs128(addr)
    assert raw_x.tolist() == [3, 0, 127, 9, 17]
    assert raw_y.tolist() == [5, 127, 0, 9, 64]
    assert on.tolist() == [0, 1, 1, 1, 0]
    assert keep.tolist() == [True, True, True, False, True]
    col, row = cifar10dvs_xy(raw_x, raw_y)       # upright: column 127 - raw y, row 127 - raw x
    assert col.tolist() == [122, 0, 127, 118, 63]
    assert row.tolist() == [124, 127, 0, 118, 110]


def test_aedat2_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    t = np.sort(rng.integers(0, 2 ** 31 - 1, 1000))
    addr = rng.integers(0, 2 ** 15, 1000).astype(np.uint32)
    write_aedat2(tmp_path / "a.aedat", t, addr)
    raw = (tmp_path / "a.aedat").read_bytes()
    assert raw.startswith(b"#!AER-DAT2.0\r\n")
    t2, addr2 = read_aedat2(raw)
    assert np.array_equal(t, t2) and np.array_equal(addr, addr2)
    with pytest.raises(AedatError, match="multiple of 8"):
        read_aedat2(raw[:-3])
    assert len(read_aedat2(b"#!AER-DAT2.0\r\n")[0]) == 0


def _packet(kind, size, overflow, events, capacity=None):
    n = len(events) // size
    head = struct.pack("<hhiiiiii", kind, 1, size, 4, overflow, capacity or n, n, n)
    return head + events + b"\0" * (size * ((capacity or n) - n))


def test_aedat3_polarity_packets_by_hand():
    def pol(x, y, on, valid, t):
        return struct.pack("<Ii", x << 17 | y << 2 | on << 1 | valid, t)
    body = (_packet(0, 8, 0, struct.pack("<Ii", 0x5, 0))                # special event: skipped
            + _packet(1, 8, 0, pol(100, 7, 1, 1, 50) + pol(3, 120, 0, 1, 60)
                      + pol(9, 9, 1, 0, 70), capacity=5)               # invalid event: skipped
            + _packet(2, 12, 0, b"\1" * 24)                             # a frame-ish packet
            + _packet(1, 8, 1, pol(127, 127, 0, 1, 5)))                 # overflow epoch 1
    data = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n" + body
    t, x, y, on = read_aedat3_polarity(data)
    assert t.tolist() == [50, 60, (1 << 31) | 5]
    assert x.tolist() == [100, 3, 127] and y.tolist() == [7, 120, 127]
    assert on.tolist() == [1, 0, 0]
    with pytest.raises(AedatError, match="runs past the end"):
        read_aedat3_polarity(data[:-4])
    with pytest.raises(AedatError, match="AEDAT 3"):
        read_aedat3_polarity(b"#!AER-DAT2.0\r\n" + body)


def test_aedat3_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    n = 10_000
    t = np.sort(rng.integers(2 ** 31 - 5_000, 2 ** 31 + 5_000, n))     # crosses an overflow
    x, y, on = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    write_aedat3_polarity(tmp_path / "g.aedat", t, x, y, on, events_per_packet=999)
    got = read_aedat3_polarity((tmp_path / "g.aedat").read_bytes())
    for a, b in zip(got, (t, x, y, on)):
        assert np.array_equal(a, b)


def test_aedat3_packet_claiming_more_events_than_it_holds_is_rejected():
    ev = struct.pack("<Ii", 1 << 17 | 2 << 2 | 1 << 1 | 1, 5) + struct.pack("<Ii", 3 << 17 | 1, 6)
    head = b"#!AER-DAT3.1\r\n#!END-HEADER\r\n"
    nxt = _packet(1, 8, 0, struct.pack("<Ii", 5 << 17 | 1, 7))
    for number in (3, -1):          # eventNumber outside [0, eventCapacity = 2]
        packet = struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 2, number, 2) + ev
        for data in (head + packet, head + packet + nxt):   # last packet, or one follows
            with pytest.raises(AedatError, match="eventNumber"):
                read_aedat3_polarity(data)
