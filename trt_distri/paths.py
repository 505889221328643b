"""Where outputs go: checked before any work, written atomically, and leftovers of interrupted writes removed.

Temporary names carry the writer's process id (`.NAME.partial-PID`, `.NAME.pipeline-PID`, `.NAME.old-PID`,
`.NAME.PID.partial`): `remove_stale` deletes those whose process is gone, so an interrupted (even killed) export,
build or cache creation leaves nothing behind after the next one.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from trt_distri.errors import ConfigError

_TEMP = re.compile(r"^\..+\.(?:(?:partial|pipeline|old|tmp)-?(\d+)|(\d+)\.partial)$")


def check_output_file(out: Path, overwrite: bool, flag: str = "-o") -> None:
    """Refuse an output file that cannot be written, before the work that produces it."""
    if out.is_dir():
        raise ConfigError(f"{flag} {out} is a folder. Note: expected a file name. Fix: pass a file such as "
                          f"{out / 'image.png'}")
    _check_parent(out, flag)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists. Fix: pass --overwrite, or choose another {flag}")


def check_output_dir(out: Path, overwrite: bool, flag: str = "-o") -> None:
    """Refuse a work directory that cannot be written (or would replace one without --overwrite)."""
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists. Fix: pass --overwrite to replace it, or choose another {flag}")
    _check_parent(out, flag, create=True)


def _check_parent(out: Path, flag: str, create: bool = False) -> None:
    parent = out.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"cannot write {flag} {out}: {existing} is a file, not a folder. Fix: choose another "
                          f"{flag}")
    if existing != parent and not create:
        raise ConfigError(f"cannot write {flag} {out}: the folder {out.parent} does not exist. Fix: create it "
                          f"(mkdir -p {out.parent}) or choose another {flag}")


def remove_path(path: Path) -> None:
    """Delete a file or a folder tree; nothing when it is absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files and folders in `folder` (module docstring) whose writing process is gone; with
    `name`, only those of that output (`.NAME.*`)."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if name is not None and not entry.name.startswith(f".{name}."):
            continue
        match = _TEMP.match(entry.name)
        if match and not _alive(int(match.group(1) or match.group(2))):
            remove_path(entry)
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
