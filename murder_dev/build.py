"""Build ``dist/murder.pyz``: murder_core and its pure-Python dependencies in one zipapp.

The hosts we deploy to are only promised a python3 (3.9+), so everything the engine
imports at run time travels inside the archive. Murder's old script names are written
next to it as tiny shims, so scripts that call ``murder_client.py`` keep working.
"""

from __future__ import annotations

import importlib.util
import py_compile
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Packages copied into the archive besides murder_core (all pure Python).
VENDORED = ("bencodepy", "tqdm")

_MAIN = """\
import sys
from murder_core.cli import main_from_zipapp
sys.exit(main_from_zipapp())
"""

_SHIM = """\
#!/usr/bin/env python3
# Murder's old command name, kept for scripts written against Murder (2010).
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "murder.pyz"))
from murder_core.cli import {func}  # noqa: E402

sys.exit({func}())
"""

LEGACY = {
    "murder_tracker.py": "legacy_tracker",
    "murder_make_torrent.py": "legacy_make_torrent",
    "murder_client.py": "legacy_client",
}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise SystemExit(f"build: package {name!r} is not installed (pip install -e .)")
    return Path(spec.origin).parent


def _compile_beside(stage: Path) -> None:
    """Put ``module.pyc`` next to each ``module.py``, where zipimport looks for it.

    zipimport cannot cache what it compiles, so without these every start of the
    zipapp compiles every module again: on a 16-host deploy sharing two cores that
    was 9% of each peer's CPU and most of the two seconds before the first block
    moved. The files are unchecked-hash pycs of the building interpreter; a host
    whose Python has another bytecode magic ignores them and compiles the sources.
    """
    for source in stage.rglob("*.py"):
        py_compile.compile(
            str(source),
            cfile=str(source.with_suffix(".pyc")),
            dfile=str(source.relative_to(stage)),
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )


def build_pyz(out: Path = ROOT / "dist" / "murder.pyz") -> Path:
    """Write the zipapp (and legacy shims beside it) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "tests")
    with tempfile.TemporaryDirectory() as tmp:
        stage = Path(tmp) / "app"
        shutil.copytree(ROOT / "murder_core", stage / "murder_core", ignore=ignore)
        for name in VENDORED:
            shutil.copytree(_package_dir(name), stage / name, ignore=ignore)
        (stage / "__main__.py").write_text(_MAIN)
        _compile_beside(stage)
        partial = out.with_name(out.name + ".tmp")
        # Stored, not deflated: every start of every peer would inflate each module it
        # imports again (67 of them, ~5 ms of CPU); the archive is copied once per host.
        zipapp.create_archive(stage, partial, interpreter="/usr/bin/env python3", compressed=False)
        partial.replace(out)
    for script, func in LEGACY.items():
        shim = out.parent / script
        shim.write_text(_SHIM.format(func=func))
        shim.chmod(0o755)
    return out


if __name__ == "__main__":
    print(build_pyz(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist" / "murder.pyz"))
