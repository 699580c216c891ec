"""Small outputs (CSV reports, PNG plots) written complete or not at all.

`atomic_output(path)` yields a temporary path beside `path` (same folder, hidden, the same
`.NAME.XXXX.vsqe-tmp.EXT` pattern as the video writer) and renames it over `path` only when the
block ends without an error; any error, Ctrl-C or SIGTERM removes it. OSErrors become one-line
OutputErrors (disk full is named as such), so a failed write never leaves half a file behind.
"""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Iterator

from vsqe.errors import OutputError


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path, or (hard links, bind mounts) the
    same inode. A path that does not exist names no file yet: False unless the paths resolve alike."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def default_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp makes 0600 files)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_error(path: str | os.PathLike, exc: BaseException) -> OutputError:
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC:
        return OutputError(f"disk full while writing {path}; nothing was kept")
    if code == errno.EFBIG:
        return OutputError(f"file too large for this file system or limit while writing {path}; nothing was kept")
    text = (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).strip().splitlines()[0]
    return OutputError(f"cannot write {path}: {text}")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".vsqe-tmp{target.suffix}",
                                   dir=target.resolve().parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(target, exc) from None
    try:
        yield tmp
        os.chmod(tmp, default_mode())
        os.replace(tmp, target)
    except OSError as exc:
        _unlink(tmp)
        raise write_error(target, exc) from None
    except BaseException:
        _unlink(tmp)
        raise


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
