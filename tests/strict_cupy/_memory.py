"""Device memory of the stand-in: a memory pool that counts the bytes of live arrays.

Every new array buffer is taken from the current allocator (`cuda.using_allocator`, else the
default pool's `malloc`), as CuPy does, so `get_default_memory_pool().used_bytes()` is the bytes
held by live stand-in arrays (each rounded up to the pool's 512-byte unit) and a measuring
allocator sees every allocation. The bytes themselves live in the NumPy buffer; the pool's
block is only the account of them, held by the array that owns the buffer (views hold that
array, as CuPy's `base`) and released with it.
"""
import threading
import weakref

UNIT = 512                      # CuPy's pool rounds every allocation up to this many bytes


class Memory:
    """A block of the pool (`cupy.cuda.Memory`): `size` bytes, given back when collected."""

    def __init__(self, pool, size):
        self.size, self.device_id = size, 0
        weakref.finalize(self, pool._release, size)


class MemoryPointer:
    """`cupy.cuda.MemoryPointer`: `ptr` is the (host) address of the bytes, `mem` the block."""

    def __init__(self, mem, ptr):
        self.mem, self.ptr, self.device_id = mem, int(ptr), 0

    @property
    def device(self):
        from ._cuda import Device
        return Device(0)


class MemoryPool:
    """`cupy.cuda.MemoryPool`: `used_bytes` in live blocks, `total_bytes` with the freed blocks
    it keeps cached until `free_all_blocks`."""

    def __init__(self):
        self._lock = threading.Lock()
        self._used = self._cached = self._cached_blocks = 0

    def malloc(self, size):
        size = -(-int(size) // UNIT) * UNIT
        with self._lock:
            reuse = min(self._cached, size)
            self._cached -= reuse
            self._cached_blocks -= 1 if reuse else 0
            self._used += size
        return MemoryPointer(Memory(self, size), 0)

    def _release(self, size):
        with self._lock:
            self._used -= size
            self._cached += size
            self._cached_blocks += 1

    def used_bytes(self):
        return self._used

    def free_bytes(self):
        return self._cached

    def total_bytes(self):
        return self._used + self._cached

    def n_free_blocks(self):
        return self._cached_blocks

    def free_all_blocks(self, stream=None):
        with self._lock:
            self._cached = self._cached_blocks = 0


default_pool = MemoryPool()
_local = threading.local()      # the allocator set by using_allocator, per thread as in CuPy


def current_allocator():
    return getattr(_local, "allocator", default_pool.malloc)


def allocate(nbytes):
    """A block for a new buffer of `nbytes`, from the current allocator (none for 0 bytes)."""
    return current_allocator()(nbytes).mem if nbytes else None
