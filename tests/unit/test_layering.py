"""The packages stand on each other in one direction only (pure logic, host tier).

gtp_util and sctp_repair are libraries a user can take alone, so every module
of theirs must import with criu_ext (and everything above it) made
unimportable; procns, below all three, must import with only the standard
library. Static edges for the whole tree: ``scripts/import-graph --check``.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter: a meta-path finder refuses the blocked packages,
# then every module of the package under test is imported.
PROBE = r"""
import importlib, pkgutil, sys
blocked = set(sys.argv[2].split(","))

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ImportError(f"{name} is above this layer")
        return None

sys.meta_path.insert(0, Refuse())
pkg = importlib.import_module(sys.argv[1])
for mod in pkgutil.walk_packages(pkg.__path__, sys.argv[1] + "."):
    importlib.import_module(mod.name)
"""


@pytest.mark.parametrize("package, blocked", [
    ("procns", "gtp_util,sctp_repair,criu_ext,lab,scenario,tests,pyroute2,pycriu"),
    ("gtp_util", "criu_ext,lab,scenario,tests"),
    ("sctp_repair", "criu_ext,lab,scenario,tests,gtp_util"),
    ("criu_ext", "lab,scenario,tests"),
])
def test_package_imports_without_the_layers_above(package, blocked):
    proc = subprocess.run([sys.executable, "-c", PROBE, package, blocked], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr.strip().splitlines()[-1:]


def test_import_graph_has_no_edge_against_the_layers():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/import-graph"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gtp_util -> procns" in proc.stdout
