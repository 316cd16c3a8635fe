"""Run kernels/*.cu on the CPU under the CUDA emulation in ``cuda_emu.h`` (docs/architecture.md,
"CUDA kernels and their CPU emulation").

``build(file)`` compiles ``cuda_emu.h`` + ``kernels/<file>`` + generated launch wrappers (one
``emu_<kernel>(grid, block, args...)`` per ``extern "C" __global__`` kernel) into a shared
library with the host C++ compiler, cached under ``tests/_emu_build`` by content hash.
``launcher()`` returns a ``launch(file, kernel, grid, block, args)`` callable with the same
contract as ``CupyBackend._launch``, taking NumPy arrays and NumPy scalars; it checks every
argument against the kernel's parameter types as strictly as the GPU needs them (float32 /
int32 / int64 scalars, arrays of the pointee's dtype, C-contiguous) and checks the launch
geometry against CUDA's limits.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
KERNELS = ROOT / "kernels"
BUILD = ROOT / "tests" / "_emu_build"
HEADER = HERE / "cuda_emu.h"
CXXFLAGS = ["-std=c++17", "-O1", "-shared", "-fPIC", "-pthread", "-ffp-contract=off",
            "-fno-fast-math", "-w"]

_KERNEL_RE = re.compile(
    r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(\w+)\s*\(([^)]*)\)',
    re.S,
)


def compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


@dataclass(frozen=True)
class Param:
    decl: str
    name: str
    kind: str  # "ptr" | "f32" | "f64" | "i32" | "i64" | "u32"
    pointee: str = ""  # "float" | "long long" for pointers


def _parse_param(decl: str) -> Param:
    decl = " ".join(decl.split())
    m = re.match(r"(.*?)(\w+)$", decl)
    if not m:
        raise ValueError(f"cannot parse kernel parameter {decl!r}")
    typ, name = m.group(1), m.group(2)
    t = typ.replace("__restrict__", "").replace("const", "").strip()
    if "*" in t:
        base = t.replace("*", "").strip()
        return Param(decl, name, "ptr", base)
    kinds = {"float": "f32", "double": "f64", "int": "i32", "long long": "i64", "unsigned": "u32",
             "unsigned int": "u32"}
    if t not in kinds:
        raise ValueError(f"unsupported kernel parameter type {t!r} in {decl!r}")
    return Param(decl, name, kinds[t])


def parse_kernels(src: str) -> dict[str, list[Param]]:
    """``{kernel name: params}`` of every ``extern "C" __global__`` kernel in ``src`` (each
    written out under its own name: no kernel is declared through a macro)."""
    out: dict[str, list[Param]] = {}
    for m in _KERNEL_RE.finditer(src):
        out[m.group(1)] = [_parse_param(p) for p in m.group(2).split(",") if p.strip()]
    return out


def _wrapper_source(file: str, kernels: dict[str, list[Param]]) -> str:
    lines = [f'#include "{HEADER}"', f'#include "{KERNELS / file}"', ""]
    for name, params in kernels.items():
        decls = ", ".join(p.decl for p in params)
        names = ", ".join(p.name for p in params)
        lines.append(
            f'extern "C" void emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, '
            f"unsigned by, unsigned bz{', ' if decls else ''}{decls}) {{\n"
            f"    ::emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz),\n"
            f"                  [=]() {{ {name}({names}); }});\n"
            f"}}"
        )
    return "\n".join(lines) + "\n"


_CTYPES = {"ptr": ctypes.c_void_p, "f32": ctypes.c_float, "f64": ctypes.c_double,
           "i32": ctypes.c_int,
           "i64": ctypes.c_longlong, "u32": ctypes.c_uint}
_SCALAR = {"f32": np.float32, "f64": np.float64, "i32": np.int32, "i64": np.int64, "u32": np.uint32}
_POINTEE = {"float": np.float32, "double": np.float64, "long long": np.int64,
            "int": np.int32, "bool": np.bool_}


class EmuModule:
    """One kernels/<file> compiled for the CPU."""

    def __init__(self, file: str, lib_path: Path, kernels: dict[str, list[Param]]) -> None:
        self.file = file
        self.lib = ctypes.CDLL(str(lib_path))
        self.kernels = kernels
        self.launches: list[tuple[str, tuple, tuple]] = []
        for name, params in kernels.items():
            fn = getattr(self.lib, f"emu_{name}")
            fn.argtypes = [ctypes.c_uint] * 6 + [_CTYPES[p.kind] for p in params]
            fn.restype = None

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        if name not in self.kernels:
            raise KeyError(f"kernel {name!r} not in kernels/{self.file}")
        params = self.kernels[name]
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
        if not (1 <= grid[0] <= 2**31 - 1 and 1 <= grid[1] <= 65535 and 1 <= grid[2] <= 65535):
            raise ValueError(f"{name}: grid {grid} outside CUDA's limits")
        nthreads = block[0] * block[1] * block[2]
        if not (1 <= nthreads <= 1024 and block[2] <= 64):
            raise ValueError(f"{name}: block {block} outside CUDA's limits")
        if len(args) != len(params):
            raise TypeError(f"{name}: {len(args)} arguments for {len(params)} parameters")
        cargs: list[Any] = []
        for p, a in zip(params, args, strict=True):
            if p.kind == "ptr":
                want = _POINTEE[p.pointee]
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{name}({p.name}): expected an array, got {type(a).__name__}")
                if a.dtype != want:
                    raise TypeError(f"{name}({p.name}): expected {np.dtype(want)}, got {a.dtype}")
                if not a.flags.c_contiguous:
                    raise TypeError(f"{name}({p.name}): array is not C-contiguous")
                cargs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                want = _SCALAR[p.kind]
                if type(a) is not want:
                    raise TypeError(f"{name}({p.name}): expected numpy.{want.__name__}, "
                                    f"got {type(a).__name__}")
                cargs.append(_CTYPES[p.kind](a.item()))
        self.launches.append((name, grid, block))
        getattr(self.lib, f"emu_{name}")(*grid, *block, *cargs)


_modules: dict[str, EmuModule] = {}


def build(file: str) -> EmuModule:
    """Compile (or load from tests/_emu_build) the emulated module of kernels/<file>."""
    if file in _modules:
        return _modules[file]
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (g++, c++ or clang++)")
    src = (KERNELS / file).read_text()
    kernels = parse_kernels(src)
    wrapper = _wrapper_source(file, kernels)
    digest = hashlib.sha256(
        "\0".join([src, HEADER.read_text(), wrapper, cxx, " ".join(CXXFLAGS)]).encode()
    ).hexdigest()[:16]
    BUILD.mkdir(parents=True, exist_ok=True)
    lib = BUILD / f"{Path(file).stem}-{digest}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=BUILD) as tmp:
            cpp = Path(tmp) / f"{Path(file).stem}_emu.cpp"
            cpp.write_text(wrapper)
            out = Path(tmp) / lib.name
            proc = subprocess.run([cxx, *CXXFLAGS, "-o", str(out), str(cpp)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"emulated build of kernels/{file} failed:\n{proc.stderr}")
            os.replace(out, lib)
    mod = EmuModule(file, lib, kernels)
    _modules[file] = mod
    return mod


def launcher() -> Any:
    """A ``launch(file, kernel, grid, block, args)`` callable running the emulated kernels."""

    def launch(file: str, kernel: str, grid: tuple, block: tuple, args: tuple) -> None:
        build(file).launch(kernel, grid, block, args)

    return launch


# ------------------------------------------------------------------ guarded allocations
class GuardedXP:
    """A stand-in for ``numpy`` as ``xp`` whose ``empty`` / ``zeros`` return views inside
    larger buffers with NaN-pattern guard zones on both sides, so that ``check()`` catches any
    kernel write out of bounds. ``array`` copies an input into such a buffer too."""

    GUARD = 64  # elements on each side; 256+ bytes keeps 16-byte alignment

    def __init__(self) -> None:
        self.buffers: list[tuple[np.ndarray, int, int]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def _alloc(self, shape: Any, dtype: Any, fill: Any) -> np.ndarray:
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        size = int(np.prod(shape, dtype=np.int64))
        dtype = np.dtype(dtype)
        big = np.empty(size + 2 * self.GUARD, dtype=dtype)
        big.view(np.uint8)[:] = 0xA7
        view = big[self.GUARD:self.GUARD + size]
        if fill is not None:
            view[...] = fill
        self.buffers.append((big, self.GUARD, size))
        return view.reshape(shape)

    def empty(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        out = self._alloc(shape, dtype, None)
        if out.dtype.kind == "f":
            out[...] = np.nan  # kernels must write every element they own
        return out

    def zeros(self, shape: Any, dtype: Any = np.float32) -> np.ndarray:
        return self._alloc(shape, dtype, 0)

    def array(self, a: Any, dtype: Any = None) -> np.ndarray:
        a = np.asarray(a, dtype=dtype)
        out = self._alloc(a.shape, a.dtype, None)
        out[...] = a
        return out

    def check(self) -> None:
        for big, g, size in self.buffers:
            raw = big.view(np.uint8)
            item = big.dtype.itemsize
            if not (np.all(raw[:g * item] == 0xA7) and np.all(raw[(g + size) * item:] == 0xA7)):
                raise AssertionError("a kernel wrote outside an array's bounds")
