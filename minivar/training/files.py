"""Writing files so that nothing is lost: atomic writes, and one run per output folder.

- atomic_write: the content goes to a temporary file beside the target, is flushed to the
  disk (fsync), then renamed over the target. An interrupted write (Ctrl-C, SIGKILL, a power
  cut) never leaves a half-written file. Temporaries are named <file>.<pid>.<random>.tmp: the
  next write of the same file removes those whose process is gone (a killed write), and never
  one of a process still running (two programs writing the same file at the same moment each
  finish; the last rename wins). A full disk is said in one line; the previous file stays.
  Every failure names the file meant (never the temporary) and the cause.
- RunLock: while a run trains, it holds an exclusive lock on <out-dir>/.lock. A second run
  started on the same folder stops at once with one line, instead of both overwriting each
  other's checkpoints. The operating system drops the lock when the process ends, however it
  ends (a crash, SIGKILL), so a dead run never leaves the folder locked. The lock writes its
  pid only into a regular file of its own: a .lock that is a symlink (or a hard link, a
  folder, a device) is refused, so the lock never writes through it into another file.
"""
import errno
import os
import stat
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


def broken_link(path):
    """What is wrong with `path` if it is a symlink that leads nowhere (dangling, or a loop), else None."""
    path = Path(path)
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return f"{path} is a symlink to {os.readlink(path)}, which does not exist"
    except (RuntimeError, OSError):  # a loop: RuntimeError before Python 3.13, OSError (ELOOP) since
        return f"{path} is a symlink loop"
    return None


def not_a_file(path):
    """Why `path` cannot be read as a file, as a phrase naming it ("x is a folder"), or None if it can."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return f"{path} is a folder, not a file"
    return broken_link(path) or (f"{path} is not a regular file" if path.exists() else f"{path} does not exist")


def make_folder(folder):
    """mkdir -p, said in one line when a file or a broken symlink is in the way or the disk refuses."""
    file = blocking_file(folder)
    if file is not None:
        raise FileError(f"cannot make the folder {folder}: {file} is a file")
    for path in [Path(folder), *Path(folder).parents]:
        if broken_link(path):  # mkdir would only say "File exists"
            raise FileError(f"cannot make the folder {folder}: {broken_link(path)}")
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
    """Remove <name>.<pid>.<random>.tmp files beside `path` whose writer is no longer running
    (one that cannot be removed, in a folder this process may not change, is left as it is)."""
    path = Path(path)
    for stale in path.parent.glob(f"{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 1:].split(".", 1)[0]
        if not pid.isdigit() or not _alive(int(pid)):
            try:
                stale.unlink(missing_ok=True)
            except OSError:
                pass


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, rename it over `path`."""
    path = Path(path)
    make_folder(path.parent)
    remove_stale_temporaries(path)
    tmp = None
    try:  # (the temporary's own creation too: a read-only folder is said of `path`, not of the temporary)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp")
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
        if tmp is not None and os.path.exists(tmp):
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
        self.refuse_what_is_not_a_lock_file()
        try:  # O_NOFOLLOW: a symlink put there after the check above is refused by the kernel (ELOOP)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            self.file = os.fdopen(fd, "rb+", buffering=0)  # unbuffered: a full disk fails in write(), not in close()
            self.refuse_what_is_not_a_lock_file(os.fstat(self.file.fileno()))
        except OSError as e:
            self.__exit__()
            raise e if isinstance(e, FileError) else self.cannot(e) from None
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self.file.read().decode(errors="replace").strip() or "another process"
            self.file.close()
            raise FileError(f"{self.path.parent} is in use by another run ({holder}); wait for it to finish, or "
                            "pass another --out-dir") from None
        try:
            self.file.truncate()
            self.file.write(f"pid {os.getpid()}".encode())  # named in the message a second run gets
        except OSError as e:
            self.__exit__()
            raise self.cannot(e) from None
        return self

    def refuse_what_is_not_a_lock_file(self, status=None):
        """Raise FileError unless .lock is missing or a regular file with no other name: a hard
        link's other file would be overwritten as surely as a symlink's target."""
        try:
            status = status or os.lstat(self.path)
        except FileNotFoundError:
            return
        mode = status.st_mode
        what = f"a symlink to {os.readlink(self.path)}" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) \
            else "a special file (a pipe, socket or device)" if not stat.S_ISREG(mode) \
            else "a hard link (a file with another name too)" if status.st_nlink > 1 else None
        if what:
            raise self.not_a_lock_file(what)

    def not_a_lock_file(self, what):
        return FileError(f"{self.path} is {what}, not a lock file; it was left untouched: remove it, or pass another "
                         "--out-dir")

    def cannot(self, error):
        """The OSError of taking the lock, as one line naming the lock file and the cause."""
        if error.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            return self.not_a_lock_file("a symlink")
        if error.errno in DISK_FULL:
            return FileError(f"no space left on the disk of {self.path.parent}: cannot write the run's lock file "
                             f"{self.path.name}; free some space and run again")
        return FileError(f"cannot take the run's lock {self.path}: {error.strerror or error}")

    def __exit__(self, *exc):
        if self.file is not None:
            self.file.close()  # closing releases the lock
        if fcntl is not None:
            if self.created and [p.name for p in self.path.parent.iterdir()] == [".lock"]:
                self.path.unlink(missing_ok=True)  # a run that stopped before writing anything leaves no folder
                self.path.parent.rmdir()
        return False
