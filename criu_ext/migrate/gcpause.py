"""No garbage-collection pass of ours inside CRIU's frozen window.

CPython's cyclic collector runs when allocations pass a threshold, wherever that
happens. A full pass over a receiver that staged 10,000 PDP contexts takes tens of
milliseconds in the emulated VM, and in the freeze such a pause is a gap of the
function's. So the migration collects just before a freeze can begin (the final
dump's page server, the final dump itself) and collects nothing automatically
until the restore has ended: what a window allocates is freed by reference
counts; cycles wait for the next pass.
"""

from __future__ import annotations

import gc


def hold() -> None:
    """A full pass now, then none until :func:`release`."""
    gc.collect()
    gc.disable()


def release() -> None:
    gc.enable()
