"""procns.imports.skip_package_init, and that the toolkit's entry points use it (host tier).

Each case runs in a fresh interpreter: what is measured is which modules a new
process loads, which an interpreter that already imported pyroute2 cannot show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# pyroute2 modules only its package __init__ imports: none of the toolkit's code needs them
UNUSED = ("pyroute2.ndb.main", "pyroute2.ipdb", "pyroute2.ipset", "pyroute2.iwutil")


def fresh(code: str) -> Any:
    """Run ``code`` in a new interpreter; it prints one JSON value, returned here."""
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_a_package_init_runs_only_when_something_but_a_submodule_is_asked(tmp_path):
    pkg = tmp_path / "fatpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import sys\nsys.fat_inits = getattr(sys, 'fat_inits', 0) + 1\n"
                                     "from fatpkg.sub import VALUE as Thing\n")
    (pkg / "sub.py").write_text("VALUE = 42\n")
    got = fresh(f"""
        import json, sys
        sys.path.insert(0, {str(tmp_path)!r})
        from procns.imports import skip_package_init
        skip_package_init("fatpkg")
        import fatpkg.sub
        before = getattr(sys, "fat_inits", 0)
        from fatpkg import sub                      # a submodule: still no __init__
        still = getattr(sys, "fat_inits", 0)
        from fatpkg import Thing                    # defined by __init__ only: it runs
        import fatpkg
        fatpkg.Thing
        skip_package_init("fatpkg")                 # already imported: nothing happens
        try:
            fatpkg.Missing
            missing = "no error"
        except AttributeError as e:
            missing = str(e)
        print(json.dumps([before, still, sys.fat_inits, Thing, sub.VALUE, missing]))
        """)
    assert got[:5] == [0, 0, 1, 42, 42]
    assert "Missing" in got[5]


def test_absent_and_plain_modules_are_left_to_the_normal_import():
    got = fresh("""
        import json, sys
        from procns.imports import skip_package_init
        skip_package_init("no_such_package_here")
        skip_package_init("textwrap")               # a module, not a package
        print(json.dumps(["no_such_package_here" in sys.modules, "textwrap" in sys.modules]))
        """)
    assert got == [False, False]


def test_dump_and_restore_code_loads_no_unused_pyroute2_or_pycriu_module():
    got = fresh(f"""
        import json, sys
        import criu_ext.plugins.gtp, criu_ext.plugins.netfilter, criu_ext.check, criu_ext.rpc
        import gtp_util.dump, gtp_util.restorer, gtp_util.netlink, gtp_util.rtnl
        from pyroute2.iproute.linux import IPRoute
        from pyroute2.conntrack import Conntrack
        loaded = [m for m in {list(UNUSED)!r} if m in sys.modules]
        images = "pycriu.images" in sys.modules     # every image type's protobuf module
        from pyroute2 import IPRoute as Full        # code that wants the whole package
        print(json.dumps([loaded, images, Full is IPRoute, "pyroute2.ndb.main" in sys.modules]))
        """)
    assert got == [[], False, True, True]
