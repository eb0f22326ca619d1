"""A short summary of CRIU's own images in a directory, read with pycriu."""

from __future__ import annotations

import os
import stat

from procns.files import MiB, read_bytes

MAX_IMAGE = 64 * MiB  # what show reads of one CRIU image


def _load(path: str):
    """A CRIU image read with pycriu, from a regular file of at most MAX_IMAGE bytes."""
    import pycriu.images

    return pycriu.images.loads(read_bytes(path, MAX_IMAGE))


def stats(images_dir: str) -> dict:
    """CRIU's stats-dump / stats-restore entries (times in microseconds)."""
    out = {}
    for kind in ("dump", "restore"):
        path = os.path.join(images_dir, f"stats-{kind}")
        if not os.path.exists(path):
            path += ".img"
        try:
            entries = _load(path)["entries"]
        except (OSError, KeyError, Exception):  # pycriu raises bare Exceptions on bad magic
            continue
        if entries:
            out[kind] = dict(entries[0].get(kind, {}))
    return out


def summary(images_dir: str) -> dict:
    """Process tree, image count and size, and CRIU's timing statistics."""
    files = sorted(os.listdir(images_dir))
    imgs = [f for f in files if f.endswith(".img")]
    size = 0
    for f in imgs:  # lstat: a link (dangling or not) counts as itself, never followed
        st = os.lstat(os.path.join(images_dir, f))
        size += st.st_size if stat.S_ISREG(st.st_mode) else 0
    out: dict = {"images": len(imgs), "bytes": size}
    if "inventory.img" not in files:
        out["error"] = "no inventory.img: not a CRIU image directory (or the dump failed)"
        return out
    try:
        inv = _load(os.path.join(images_dir, "inventory.img"))["entries"][0]
        out["image_version"] = inv.get("img_version")
        out["root_ids"] = inv.get("root_ids")
    except Exception as exc:  # noqa: BLE001 - report, don't die, on odd images
        out["error"] = f"inventory.img: {exc}"
    tasks = []
    try:
        for e in _load(os.path.join(images_dir, "pstree.img"))["entries"]:
            pid = e.get("pid")
            comm = None
            try:
                core = _load(os.path.join(images_dir, f"core-{pid}.img"))["entries"][0]
                comm = core.get("tc", {}).get("comm")
            except Exception:  # noqa: BLE001
                pass
            tasks.append({"pid": pid, "ppid": e.get("ppid"), "threads": len(e.get("threads", [])),
                          "comm": comm})
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"pstree.img: {exc}"
    out["tasks"] = tasks
    links = []
    for f in imgs:
        if f.startswith("netdev-"):
            try:
                for e in _load(os.path.join(images_dir, f))["entries"]:
                    links.append({"name": e.get("name"), "type": e.get("type")})
            except Exception:  # noqa: BLE001
                pass
    out["links"] = links
    out["stats"] = stats(images_dir)
    return out
