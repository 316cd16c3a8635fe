"""benchmarks/gpu_check.sh, the one run on a GPU machine: it parses, and its tests step runs
every test file that has GPU cases (found here from the tests' own code, so a file that gains
a GPU case and is not added to the script fails this test)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _has_gpu_cases(path: Path) -> bool:
    """A test function takes the `be` fixture (whose gpu case runs on the GPU) or
    `gpu_backend`, or is marked `gpu`, or the module skips itself without CuPy."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            if {a.arg for a in node.args.args} & {"be", "gpu_backend"}:
                return True
            if any("mark.gpu" in ast.unparse(d) for d in node.decorator_list):
                return True
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "importorskip" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "cupy"):
            return True
    return False


def _script_test_files() -> list[str]:
    m = re.search(r"^GPU_TEST_FILES=\((.*?)\)", SCRIPT.read_text(), re.S | re.M)
    assert m, "gpu_check.sh has no GPU_TEST_FILES=( ... ) list"
    return m.group(1).split()


def test_gpu_check_runs_every_test_file_with_gpu_cases():
    with_gpu = {f"tests/{p.name}" for p in (ROOT / "tests").glob("test_*.py")
                if _has_gpu_cases(p)}
    # the detection works: these files have GPU cases today
    assert {"tests/test_cupy_backend.py", "tests/test_step.py",
            "tests/test_checkpoint.py"} <= with_gpu
    listed = _script_test_files()
    missing = sorted(with_gpu - set(listed))
    assert not missing, f"gpu_check.sh's GPU_TEST_FILES lacks {missing}"
    assert all((ROOT / f).is_file() for f in listed), listed
    assert '"${GPU_TEST_FILES[@]}"' in SCRIPT.read_text()


def test_gpu_check_scripts_parse():
    for script in [SCRIPT, *sorted((ROOT / "benchmarks" / "gpu_check.d").glob("*.sh"))]:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"
