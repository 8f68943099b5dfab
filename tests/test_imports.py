"""Every module imports on its own, first: no import cycle hides behind a lucky import order."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import importlib, pkgutil, sys
import segflow
names = sorted(m.name for m in pkgutil.walk_packages(segflow.__path__, "segflow.") if m.name != "segflow.__main__")
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "segflow" or m.startswith("segflow.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(len(names))
print("\\n".join(failed))
"""


def test_every_module_imports_first() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, *failed = done.stdout.strip().split("\n")
    assert int(count) > 50
    assert not [f for f in failed if f], failed
