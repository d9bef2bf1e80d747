"""The strict CuPy stand-in (tests/strict_cupy): each refusal of CuPy's raises, each explicit
copy works, its names are CuPy 14's, and minirate.backend knows it as device "strict"."""
import ctypes
import os
import subprocess
import sys

import numpy as np
import pytest

from minirate import backend
from tests.conftest import ROOT
from tests.strict_cupy import cupy as xp
from tests.strict_cupy import names, ndarray, register


@pytest.fixture(autouse=True)
def registered():
    register()


@pytest.fixture
def a():
    return xp.asarray(np.arange(6.0).reshape(2, 3))


# -- refusals -------------------------------------------------------------------------------
@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda v: np.savez("unused", v=v),
                                     lambda v: np.ascontiguousarray(v),
                                     lambda v: np.ones(3)[v.astype(np.int64)]],
                         ids=["asarray", "array", "savez", "ascontiguousarray", "index"])
def test_implicit_conversion_to_numpy_is_refused(a, convert):
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        convert(a)


@pytest.mark.parametrize("mix", [
    lambda a, h: a + h, lambda a, h: h + a, lambda a, h: a * h, lambda a, h: h < a,
    lambda a, h: xp.add(a, h), lambda a, h: xp.maximum(h, a), lambda a, h: xp.where(a > 0, h, a),
    lambda a, h: xp.concatenate([a, h]), lambda a, h: xp.matmul(a, h.T),
    lambda a, h: a.__setitem__(Ellipsis, h), lambda a, h: a.__setitem__(0, h[0]),
    lambda a, h: a.__iadd__(h), lambda a, h: xp.ascontiguousarray(h),
    lambda a, h: a[np.array([0, 1])], lambda a, h: a[np.array([True, False])],
    lambda a, h: xp.add(a, 1.0, out=h), lambda a, h: xp.add(a, [1.0, 2.0, 3.0]),
])
def test_mixing_with_numpy_arrays_is_refused(a, mix):
    with pytest.raises(TypeError):
        mix(a, np.ones((2, 3)))


@pytest.mark.parametrize("call", [np.exp, np.sum, lambda v: np.concatenate([v]),
                                  lambda v: np.add(v, v), lambda v: np.multiply(v, 2.0),
                                  lambda v: np.less(v, 2.0), lambda v: np.less(v, np.ones(3)),
                                  lambda v: np.add.reduce(v), lambda v: np.shape(v),
                                  lambda v: np.float32(2) * v + np.ones(3)])
def test_numpy_functions_on_device_arrays_are_refused(a, call):
    with pytest.raises(TypeError):
        call(a)


def test_a_numpy_scalar_operator_is_computed_as_cupy_does(a):
    for r, want in [(np.float32(2) * a, 2 * np.arange(6.0).reshape(2, 3)),
                    (np.int64(3) + a, 3 + np.arange(6.0).reshape(2, 3)),
                    (np.float64(2.5) < a, np.arange(6.0).reshape(2, 3) > 2.5)]:
        assert isinstance(r, ndarray)
        np.testing.assert_array_equal(r.get(), want)


def test_a_basic_assignment_of_a_list_is_refused_as_cupy_does(a):
    with pytest.raises(ValueError):
        a[...] = [1.0, 2.0, 3.0]


def test_names_cupy_lacks_are_missing(a):
    for name in ("foo", "asfortranarray_no", "seterr", "errstate", "save_npz"):
        assert name not in names.load()["module"]
        with pytest.raises(AttributeError):
            getattr(xp, name)
    with pytest.raises(AttributeError):
        a.ctypes                              # NumPy's, not CuPy's
    with pytest.raises(AttributeError):
        a.__array_interface__
    with pytest.raises(AttributeError):
        xp.add.signature                      # NumPy's ufuncs have it, CuPy's not
    with pytest.raises(AttributeError):
        xp.cuda.not_a_cuda_name
    assert callable(xp.add.at) and callable(xp.add.reduce)
    assert xp.float32 is np.float32 and xp.newaxis is None and xp.__version__.startswith("14")


def test_every_name_the_stand_in_offers_is_cupys():
    known = names.load()
    for name in dir(xp):
        assert name in known["module"], name
    from tests.strict_cupy._array import _ATTRIBUTES
    for name in ("sum", "reshape", "astype", "T", "shape", "dtype", "base", "data", "get"):
        assert name in _ATTRIBUTES


def test_name_file_is_current():
    """tests/cupy14_names.json against the cupy installed here (CI installs it)."""
    cupy = pytest.importorskip("cupy")
    assert names.derive(cupy) == names.load(), \
        "tests/cupy14_names.json is stale: python -m tests.strict_cupy.names"


# -- what works ---------------------------------------------------------------------------
def test_explicit_copies_work():
    h = np.arange(6.0).reshape(2, 3)
    d = xp.asarray(h)
    h[0, 0] = 100.0                              # a copy: the device array does not follow
    assert isinstance(d, ndarray) and float(d[0, 0]) == 0.0
    assert isinstance(xp.array(h), ndarray) and xp.asarray(d) is d
    assert xp.asarray(d, dtype=np.float32).dtype == np.float32
    for back in (xp.asnumpy(d), d.get(), backend.to_numpy(d)):
        assert type(back) is np.ndarray
        np.testing.assert_array_equal(back, np.arange(6.0).reshape(2, 3))
    d.get()[0, 0] = 7.0                          # get() is a copy too
    assert float(d[0, 0]) == 0.0
    d.set(np.ones((2, 3)))
    assert float(d.sum()) == 6.0


def test_scalars_lengths_and_iteration_as_cupy(a):
    s = a.sum()
    assert isinstance(s, ndarray) and s.shape == () and float(s) == 15.0   # a 0-d array
    e = a[1, 2]
    assert isinstance(e, ndarray) and e.shape == () and int(e) == 5 and e.item() == 5.0
    e[...] = 50.0                                # a 0-d view, as CuPy's
    assert float(a[1, 2]) == 50.0
    assert bool(a[0, 1]) and not bool(a[0, 0])
    assert len(a) == 2 and [r.shape for r in a] == [(3,), (3,)]
    with pytest.raises(TypeError):
        len(s)
    with pytest.raises(TypeError):
        iter(s)
    with pytest.raises(ValueError):
        bool(a)
    assert f"{a[0, 1]:.2f}" == "1.00" and a.tolist()[0] == [0.0, 1.0, 2.0]


def test_dtypes_follow_numpy_2(a):
    f = xp.ones(3, dtype=np.float32)
    assert (f * 2.0).dtype == np.float32                     # Python scalars are weak
    assert (f * np.float64(2.0)).dtype == np.float64         # NumPy scalars are not
    assert (f + xp.ones(3)).dtype == np.float64
    assert xp.exp(f).dtype == np.float32 and xp.arange(3).dtype == np.int64
    assert (xp.arange(3) / 2).dtype == np.float64 and xp.result_type(f, 1.0) == np.float32
    assert isinstance(xp.sqrt(2.0), ndarray)                 # a ufunc always gives an array


def test_data_ptr_is_the_host_address_of_the_buffer(a):
    ptr = a.data.ptr
    assert isinstance(ptr, int)
    ctypes.c_double.from_address(ptr + 8).value = 42.0       # element [0, 1]
    assert float(a[0, 1]) == 42.0
    assert a[1].data.ptr == ptr + 3 * 8                      # a view points into it


def test_memory_pool_counts_live_arrays():
    pool = xp.get_default_memory_pool()
    before = pool.used_bytes()
    b = xp.zeros((1000,), dtype=np.float64)
    assert pool.used_bytes() - before == 8192                # 8000 rounded up to 512
    v = b[10:]                                               # a view holds no new block
    assert pool.used_bytes() - before == 8192 and v.base is b
    del b
    assert pool.used_bytes() - before == 8192                # the view keeps it alive
    del v
    assert pool.used_bytes() == before
    assert pool.total_bytes() >= pool.used_bytes()
    pool.free_all_blocks()
    assert pool.total_bytes() == pool.used_bytes()


def test_using_allocator_sees_every_allocation():
    seen = []
    pool = xp.get_default_memory_pool()

    def malloc(nbytes):
        seen.append(nbytes)
        return pool.malloc(nbytes)

    c = xp.ones(4)
    with xp.cuda.using_allocator(malloc):
        d = c * 2 + 1                                        # two new buffers
    assert seen == [32, 32] and float(d.sum()) == 12.0


def test_devices_streams_and_events():
    xp.cuda.Device().synchronize()
    xp.cuda.Device(0).use()
    with pytest.raises(xp.cuda.runtime.CUDARuntimeError):
        xp.cuda.Device(1).use()                              # one device only
    assert xp.cuda.runtime.getDeviceCount() == 1
    assert xp.cuda.Stream.null.ptr == 0 and xp.cuda.get_current_stream().done
    start, end = xp.cuda.Event(), xp.cuda.Event()
    with pytest.raises(xp.cuda.runtime.CUDARuntimeError):
        xp.cuda.get_elapsed_time(start, end)                 # not recorded yet
    start.record()
    end.record()
    end.synchronize()
    assert xp.cuda.get_elapsed_time(start, end) >= 0.0


def test_nccl_is_the_stand_in_where_it_exists():
    if os.path.exists(os.path.join(ROOT, "tests", "strict_nccl.py")):
        from tests import strict_nccl
        assert xp.cuda.nccl is strict_nccl
    else:
        with pytest.raises(AttributeError):
            xp.cuda.nccl


# -- RawKernel ----------------------------------------------------------------------------
class FakeHostKernel:
    made = []

    def __init__(self, code, name, options):
        FakeHostKernel.made.append((code, name, options))
        self.calls = []

    def __call__(self, grid, block, args):
        self.calls.append((grid, block, args))


@pytest.fixture
def fake_host(monkeypatch):
    import types
    from tests.strict_cupy._module import RawKernel
    monkeypatch.setitem(sys.modules, "tests.host_cuda",
                        types.SimpleNamespace(HostKernel=FakeHostKernel))
    monkeypatch.setattr(RawKernel, "_compiled", {})
    FakeHostKernel.made = []
    return FakeHostKernel


def test_raw_kernel_hands_buffers_and_numpy_scalars_to_the_host_kernel(a, fake_host):
    k = xp.RawKernel("extern \"C\" __global__ void f(double* x, int n) {}", "f", ("-O3",))
    k((1,), (32,), (a, np.int32(6)))
    k((2,), (32,), (a, np.int32(6)), shared_mem=0)
    xp.RawKernel(k.code, "f", ("-O3",))((1,), (1,), (a, np.int32(1)))
    assert len(fake_host.made) == 1                          # compiled once per source
    grid, block, args = k.kernel.calls[0]
    assert grid == (1,) and block == (32,) and args[0] is a._a and type(args[1]) is np.int32


@pytest.mark.parametrize("grid, block, args, error", [
    (1, (32,), "a", TypeError), ((1,), 32, "a", TypeError),
    ((1,), (32,), "numpy", TypeError), ((1,), (32,), "int", TypeError),
    ((1,), (32,), "float", TypeError), ((1,), (32,), "strided", ValueError)])
def test_raw_kernel_refuses(a, fake_host, grid, block, args, error):
    arg = {"a": a, "numpy": np.ones(3), "int": 3, "float": 1.0, "strided": a.T}[args]
    k = xp.RawKernel("", "f")
    with pytest.raises(error):
        k(grid, block, (arg,))
    assert not fake_host.made or not k.kernel.calls


# -- minirate.backend ---------------------------------------------------------------------
def test_backend_knows_the_registered_device(a):
    assert register() is xp and backend.get_xp("strict") is xp and "strict" in backend.devices()
    assert backend.get_array_module(a) is xp and backend.get_array_module(np.ones(2)) is np
    assert type(backend.to_numpy(a)) is np.ndarray
    assert isinstance(backend.to_device(np.ones(2), xp), ndarray)
    assert type(backend.to_device(a, np)) is np.ndarray
    backend.synchronize(xp)
    with pytest.raises(ValueError):
        backend.register_test_device("cuda", xp, ndarray)


def test_an_ordinary_user_sees_only_cpu_and_cuda():
    for cmd in ([os.path.join(ROOT, "train.py"), "--help"],
                ["-m", "minirate.study", "memory-time", "--help"]):
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
        assert r.returncode == 0 and "{cpu,cuda}" in r.stdout and "strict" not in r.stdout
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--device", "strict"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2 and "invalid choice: 'strict'" in r.stderr


@pytest.mark.parametrize("call", [
    lambda a: xp.add(a, 1.0, where=a > 0),          # NumPy's ufuncs take where=, CuPy's not
    lambda a: xp.sum(a, initial=0.0), lambda a: a.sum(where=a > 0), lambda a: a.max(initial=0),
    lambda a: xp.zeros(3, np.float32, "C", "extra"), lambda a: xp.exp(a, order="C")])
def test_keywords_only_numpy_takes_are_refused(a, call):
    with pytest.raises(TypeError):
        call(a)
    xp.add(a, 1.0, out=a, casting="same_kind", dtype=np.float64)   # what CuPy takes
    assert float(a.sum(axis=0, keepdims=True).max()) == 9.0 and xp.sum(a, axis=1).shape == (2,)
