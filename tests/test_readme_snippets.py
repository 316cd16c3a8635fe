"""The README's "scikit-learn" and "Export" sections run as written: every ```python and
```bash block there, in order, in one fresh folder (later blocks use the files earlier ones
write), with this environment's ``gpunet`` and Python."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SECTIONS = ("scikit-learn", "Export")


def snippets() -> list[tuple[str, str, str]]:
    """``(section, language, code)`` for each block of the sections, in README order."""
    text = README.read_text(encoding="utf-8")
    out = []
    for title in SECTIONS:
        m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
        assert m, f"README has no '## {title}' section"
        for lang, code in re.findall(r"^```(python|bash)\n(.*?)^```", m.group(1), re.M | re.S):
            out.append((title, lang, code))
    return out


def test_sections_have_the_snippets():
    kinds = [(s, lang) for s, lang, _ in snippets()]
    assert kinds.count(("scikit-learn", "python")) == 1
    assert ("Export", "bash") in kinds and kinds.count(("Export", "python")) == 2
    assert "### Deploy with ONNX Runtime" in README.read_text(encoding="utf-8")


def test_readme_snippets_run_as_written(tmp_path):
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
           "GPUNET_DEVICE": "cpu"}
    for i, (section, lang, code) in enumerate(snippets()):
        if lang == "python":
            cmd = [sys.executable, "-c", code]
        else:
            cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"{section} block {i} ({lang}) failed:\n{code}\n{r.stderr}"
        print(f"--- {section} {lang}\n{r.stdout}")
    assert (tmp_path / "digits-sklearn.h5").is_file()
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.safetensors").is_file()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-s"])
