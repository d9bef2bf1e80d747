"""Run minirate's CUDA C kernels on the CPU: the same source, compiled for the host with g++.

    k = HostKernel(code, "lif_forward")            # code: with its `typedef ... real;` line
    k((grid,), (block,), (I, u0, s, u, np.int32(T), ...))

A prelude defines what the CUDA dialect adds to C++ (`__global__`, `__device__`,
`__forceinline__`, `__restrict__`, `dim3`, blockIdx/blockDim/threadIdx/gridDim) and takes the
math functions (exp, fabs, atan, ...) from <cmath>, whose float overloads match CUDA's. The
kernel's parameter list is parsed, and a generated `extern "C"` launcher runs every block and
every thread of the grid one after another: the kernels use no shared memory and no
__syncthreads, so any order of threads is a valid schedule.

Calling checks each argument against the parsed signature, as strictly as a GPU would need:
a pointer to real/float/double/int takes a C-contiguous ndarray of exactly that dtype; a value
parameter `int` takes np.int32, `long long` np.int64, `float` np.float32, `double` np.float64,
`real` the type `real` is compiled as. Anything else is a TypeError.

Compiled with g++ -O2 -ffp-contract=off: every multiply and add rounded on its own, as NumPy
does and as fused.py compiles for the GPU (--fmad=false); without it g++ may fuse a*b + c into
one FMA on machines that have one (aarch64 by default, x86-64 with -march=native).
The .so files are cached on disk by the hash of the generated source (under the temporary
directory, one folder per user) and in memory.
"""
import ctypes
import hashlib
import os
import re
import subprocess
import tempfile
import types

import numpy as np

PRELUDE = r"""
#include <cmath>
#include <cstddef>
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
struct dim3 { unsigned int x, y, z; };
static dim3 blockIdx, blockDim, threadIdx, gridDim;
using std::exp; using std::fabs; using std::atan; using std::sqrt; using std::log;
using std::tanh; using std::fmin; using std::fmax; using std::pow;
"""

SCALARS = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
CTYPES = {"int": ctypes.c_int32, "long long": ctypes.c_int64, "float": ctypes.c_float,
          "double": ctypes.c_double}
CXX = os.environ.get("CXX", "g++")
FLAGS = ("-O2", "-shared", "-fPIC", "-ffp-contract=off", "-std=c++17", "-x", "c++")

_loaded = {}


class Param:
    """One kernel parameter: its name, base type (`real` resolved) and whether it is a pointer."""

    def __init__(self, decl, real):
        m = re.fullmatch(r"\s*(?:const\s+)?([A-Za-z_][\w ]*?)\s*(\*?)\s*(?:const\s+)?"
                         r"(?:__restrict__\s+)?([A-Za-z_]\w*)\s*", decl)
        if m is None:
            raise ValueError(f"cannot parse kernel parameter {decl.strip()!r}")
        base, star, self.name = m.group(1), m.group(2), m.group(3)
        self.base = real if base == "real" else base
        if self.base not in SCALARS:
            raise ValueError(f"kernel parameter {decl.strip()!r}: type {base!r} not supported")
        self.pointer = bool(star)
        self.decl = decl.strip()

    def check(self, i, arg, kernel):
        want = np.dtype(SCALARS[self.base])
        where = f"{kernel}: argument {i} ({self.decl})"
        if self.pointer:
            if not isinstance(arg, np.ndarray):
                raise TypeError(f"{where} needs an array, got {type(arg).__name__}")
            if arg.dtype != want:
                raise TypeError(f"{where} needs dtype {want}, got {arg.dtype}")
            if not arg.flags.c_contiguous:
                raise TypeError(f"{where} needs a C-contiguous array")
            return ctypes.c_void_p(arg.ctypes.data)
        if type(arg) is not want.type:
            raise TypeError(f"{where} needs {want.type.__name__}, got {type(arg).__name__}")
        return CTYPES[self.base](arg.item())


def parse(code, name):
    """(real type, [Param]) of kernel `name` in `code`."""
    m = re.search(r"typedef\s+(float|double)\s+real\s*;", code)
    real = m.group(1) if m else None
    m = re.search(r'extern\s+"C"\s+__global__\s+void\s+' + re.escape(name) + r"\s*\(([^)]*)\)",
                  code)
    if m is None:
        raise ValueError(f'no extern "C" __global__ kernel named {name!r} in the source')
    decls = [d for d in m.group(1).split(",") if d.strip()]
    if real is None and any(re.search(r"\breal\b", d) for d in decls):
        raise ValueError(f"{name}: parameters use `real` but the source has no typedef for it")
    return real, [Param(d, real) for d in decls]


def launcher(name, params):
    """C++ of `host_launch_<name>(grid, block, params...)`: every thread of every block (its own
    names start with host_, so that they never hide a kernel parameter)."""
    decls = ", ".join(p.decl for p in params)
    names = ", ".join(p.name for p in params)
    return rf"""
extern "C" void host_launch_{name}(unsigned int host_gx, unsigned int host_gy, unsigned int host_gz,
                                   unsigned int host_bx, unsigned int host_by, unsigned int host_bz{', ' if decls else ''}{decls}) {{
    gridDim = dim3{{host_gx, host_gy, host_gz}};
    blockDim = dim3{{host_bx, host_by, host_bz}};
    for (unsigned int host_z = 0; host_z < host_gz; host_z++)
    for (unsigned int host_y = 0; host_y < host_gy; host_y++)
    for (unsigned int host_x = 0; host_x < host_gx; host_x++) {{
        blockIdx = dim3{{host_x, host_y, host_z}};
        for (unsigned int host_tz = 0; host_tz < host_bz; host_tz++)
        for (unsigned int host_ty = 0; host_ty < host_by; host_ty++)
        for (unsigned int host_tx = 0; host_tx < host_bx; host_tx++) {{
            threadIdx = dim3{{host_tx, host_ty, host_tz}};
            {name}({names});
        }}
    }}
}}
"""


def cache_dir():
    d = os.path.join(tempfile.gettempdir(), f"minirate-host-cuda-{os.getuid()}")
    os.makedirs(d, exist_ok=True)
    return d


def build(text):
    """Path of the .so compiled from C++ `text`, compiled unless already cached on disk."""
    digest = hashlib.sha256((CXX + " ".join(FLAGS) + "\n" + text).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir(), f"{digest}.so")
    if not os.path.exists(path):
        src = os.path.join(cache_dir(), f"{digest}.{os.getpid()}.cpp")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(src, "w") as f:
            f.write(text)
        r = subprocess.run([CXX, *FLAGS, src, "-o", tmp], capture_output=True, text=True)
        os.remove(src)
        if r.returncode != 0:
            raise RuntimeError(f"host compile failed:\n{r.stderr}")
        os.replace(tmp, path)            # atomic: parallel test runs may build the same file
    return path


def _grid_dims(g):
    g = (g,) if isinstance(g, (int, np.integer)) else tuple(g)
    if not 1 <= len(g) <= 3 or any(int(v) < 1 for v in g):
        raise ValueError(f"grid and block take 1 to 3 positive sizes, got {g}")
    return tuple(int(v) for v in g) + (1,) * (3 - len(g))


class HostKernel:
    """A kernel of `code` compiled for the CPU; called like cupy.RawKernel: k(grid, block, args).

    `options` are the GPU compiler's (e.g. --fmad=false); the host compile has its own flags.
    """

    def __init__(self, code, name, options=()):
        self.code, self.name, self.options = code, name, tuple(options)
        self.real, self.params = parse(code, name)
        key = (code, name)
        if key not in _loaded:
            lib = ctypes.CDLL(build(PRELUDE + code + launcher(name, self.params)))
            fn = getattr(lib, f"host_launch_{name}")
            fn.restype = None
            fn.argtypes = [ctypes.c_uint] * 6 + [
                ctypes.c_void_p if p.pointer else CTYPES[p.base] for p in self.params]
            _loaded[key] = (lib, fn)
        self._fn = _loaded[key][1]

    def __call__(self, grid, block, args):
        args = tuple(args)
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments, got {len(args)}")
        grid, block = _grid_dims(grid), _grid_dims(block)
        if block[0] * block[1] * block[2] > 1024:
            raise ValueError(f"{self.name}: a block has at most 1024 threads, got {block}")
        c_args = [p.check(i, a, self.name) for i, (p, a) in enumerate(zip(self.params, args))]
        self._fn(*grid, *block, *c_args)


def host_module():
    """NumPy, plus `RawKernel` = HostKernel: an array module on which minirate's fused paths
    run their kernels on the CPU (for tests that call a fused function with it directly)."""
    mod = types.ModuleType("numpy_host_cuda")
    mod.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    mod.RawKernel = HostKernel
    return mod
