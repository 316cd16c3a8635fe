"""Every kernels/*.cu compiles for sm_90 and an older target (docs/architecture.md, "CUDA
kernels and their CPU emulation"), with nvcc when it is installed and with NVRTC (what CuPy
uses at run time) when its library is found; plus the loader's pure-Python parts, which need
no GPU."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gpunet import kernels

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "kernels").glob("*.cu"))
# sm_75 is the oldest target CUDA 13's nvcc still accepts (sm_70 was dropped there)
ARCHS = ("sm_90", "sm_75")


def test_kernel_files_are_listed_and_installed():
    assert sorted(p.name for p in SOURCES) == sorted(kernels.FILES)
    for name in kernels.FILES:
        text = kernels.source(name)  # through importlib.resources, as at run time
        assert "__global__" in text
        assert "#include" not in text  # no toolkit headers (NVRTC, nvcc and the emulation)


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("src", SOURCES, ids=[p.name for p in SOURCES])
def test_nvcc_compiles(tmp_path, src, arch):
    out = tmp_path / f"{src.stem}.{arch}.cubin"
    proc = subprocess.run(
        [NVCC, "--std=c++17", f"-arch={arch}", "-cubin", "-Xptxas", "-warn-spills",
         "-o", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    assert out.stat().st_size > 0


def _find_nvrtc() -> str | None:
    env = os.environ.get("GPUNET_NVRTC_LIB")
    if env:
        return env
    found = ctypes.util.find_library("nvrtc")
    if found:
        return found
    for pattern in ("/usr/local/cuda*/lib64/libnvrtc.so*",
                    "/usr/local/lib/python3*/*-packages/nvidia/cu*/lib/libnvrtc.so*",
                    "/usr/local/lib/python3*/*-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so*"):
        hits = sorted(glob.glob(pattern))
        if hits:
            return hits[0]
    return None


NVRTC = _find_nvrtc()


@pytest.mark.skipif(NVRTC is None, reason="libnvrtc not found (set GPUNET_NVRTC_LIB to use one)")
@pytest.mark.parametrize("arch", ("compute_90", "compute_75"))
@pytest.mark.parametrize("name", kernels.FILES)
def test_nvrtc_compiles_with_the_loaders_options(name, arch):
    lib = ctypes.CDLL(NVRTC)
    src = kernels.source(name).encode()
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, name.encode(), 0, None, None) == 0
    opts = [o.encode() for o in kernels.COMPILE_OPTIONS] + [f"-arch={arch}".encode()]
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    assert rc == 0, log.value.decode(errors="replace")


def test_compile_errors_name_the_file_and_line():
    log = (
        "/tmp/tmpabc/4f2e.cu(17): error: identifier \"foo\" is undefined\n"
        "/tmp/tmpabc/4f2e.cu(23): error: expected a \";\"\n"
        "2 errors detected in the compilation of \"/tmp/tmpabc/4f2e.cu\".\n"
    )
    msg = kernels.describe_compile_log("softmax.cu", log)
    assert msg.splitlines()[0].startswith("kernels/softmax.cu:17: error: identifier")
    assert "kernels/softmax.cu:23" in msg
    assert "kernels/batchnorm.cu: compile failed" in kernels.describe_compile_log(
        "batchnorm.cu", "something else went wrong")


def test_cache_dir_follows_cupy(monkeypatch):
    monkeypatch.setenv("CUPY_CACHE_DIR", "/x/y")
    assert kernels.cache_dir() == "/x/y"
    monkeypatch.delenv("CUPY_CACHE_DIR")
    assert kernels.cache_dir().endswith(os.path.join(".cupy", "kernel_cache"))
