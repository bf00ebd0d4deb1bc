"""Writing files so that nothing is lost: atomic writes, and one run per output folder.

- atomic_write: the content goes to a temporary file beside the target, is flushed to the
  disk (fsync), then renamed over the target. An interrupted write (Ctrl-C, SIGKILL, a power
  cut) never leaves a half-written file. Temporaries are named <file>.<pid>.<random>.tmp: the
  next write of the same file removes those whose process is gone (a killed write), and never
  one of a process still running (two programs writing the same file at the same moment each
  finish; the last rename wins). A full disk is said in one line; the previous file stays.
- RunLock: while a run trains, it holds an exclusive lock on <out-dir>/.lock. A second run
  started on the same folder stops at once with one line, instead of both overwriting each
  other's checkpoints. The operating system drops the lock when the process ends, however it
  ends (a crash, SIGKILL), so a dead run never leaves the folder locked.
"""
import errno
import os
import tempfile
from pathlib import Path

try:
    import fcntl  # POSIX (Linux, macOS)
except ImportError:  # Windows: no advisory locks here; runs are not stopped from sharing a folder
    fcntl = None


class FileError(OSError):
    """A file that could not be written, or a folder already in use: one line, with the fix.
    (An OSError, so that every command's one-line handler for OSErrors says it as it is.)"""


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def blocking_file(folder):
    """The file standing where `folder` or one of its parents should be a folder, else None."""
    for path in [Path(folder), *Path(folder).parents]:
        if path.exists():
            return None if path.is_dir() else path
    return None


def make_folder(folder):
    """mkdir -p, said in one line when a file is in the way or the disk refuses."""
    file = blocking_file(folder)
    if file is not None:
        raise FileError(f"cannot make the folder {folder}: {file} is a file")
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(f"cannot make the folder {folder}: {e.strerror or e}") from None


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or an odd name): leave its file alone
    return True


def remove_stale_temporaries(path):
    """Remove <name>.<pid>.<random>.tmp files beside `path` whose writer is no longer running."""
    for stale in path.parent.glob(f"{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 1:].split(".", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it over `path`."""
    path = Path(path)
    make_folder(path.parent)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on the disk before the rename makes it the real file
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give outputs the usual permissions
        os.replace(tmp, path)  # atomic on POSIX and Windows
    except OSError as e:
        if e.errno in DISK_FULL:
            raise FileError(f"no space left on the disk of {path.parent} while writing {path.name}; "
                            f"nothing was replaced: free some space and run again") from None
        raise FileError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class RunLock:
    """`with RunLock(out_dir):` holds the folder's lock for the block, or raises FileError at once."""

    def __init__(self, folder):
        self.path, self.file, self.created = Path(folder) / ".lock", None, False

    def __enter__(self):
        if fcntl is None:
            return self
        self.created = not self.path.parent.exists()
        make_folder(self.path.parent)
        self.file = open(self.path, "a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.seek(0)
            holder = self.file.read().strip() or "another process"
            self.file.close()
            raise FileError(f"{self.path.parent} is in use by another run ({holder}); wait for it to finish, or "
                            "pass another --out-dir") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()}")  # named in the message a second run gets
        self.file.flush()
        return self

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # closing releases the lock
            if self.created and [p.name for p in self.path.parent.iterdir()] == [".lock"]:
                self.path.unlink(missing_ok=True)  # a run that stopped before writing anything leaves no folder
                self.path.parent.rmdir()
        return False
