"""Private files, written so that a crash at any instant leaves the old or the new content.

Imports nothing but `os`: the hook path (confabctl) uses these too, and must
stay fast. Every file is created 0600 inside a 0700 dir and opened with
O_NOFOLLOW, so a planted symlink is never followed.
"""

import os

FILE_MODE = 0o600
DIR_MODE = 0o700


def make_dirs(path: str, mode: int = DIR_MODE) -> str:
    """Like os.makedirs, but every directory it creates gets `mode`.

    os.makedirs gives the parents it creates 0777 minus the umask: the first
    `~/.confab/sync` made `~/.confab` 0755, readable by every local user.
    Existing directories are left as they are.
    """
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            pass
    return missing[0] if missing else path


def ensure_private_dir(path: str) -> str:
    """Create `path` (and parents) 0700 if missing; refuse a symlink at `path`."""
    make_dirs(path, DIR_MODE)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path):
        raise NotADirectoryError(f"{path} is not a directory")
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        os.chmod(path, DIR_MODE)
    return path


def read_private_file(path: str) -> bytes:
    """Read a file without following a symlink at its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return f.read()


def atomic_write(path: str, data: bytes) -> None:
    """Replace `path` with `data`: temp file, fsync, rename. Cleans up on failure (e.g. ENOSPC)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def append_line(path: str, data: bytes) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.write(fd, data + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_if_present(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def try_lock_file(path: str) -> "int | None":
    """An exclusive flock on `path` (created 0600, never through a link): its fd, or None when
    another process holds it. A file unlinked (by its last holder) between our open and our
    flock is not the one at `path` any more: open it again, so two holders never each hold
    "the" lock on different inodes."""
    import fcntl  # here, not at the top: the hook path imports this module and never locks

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            here = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            here = None
        held = os.fstat(fd)
        if here is not None and (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)
