"""Writing next to a user's files without writing through anything they put there.

A name the package writes in a user's folder (the batch lock and log, temporary files) may already
exist as a symbolic link, a FIFO or a folder. Opening it the ordinary way would follow the link
(truncating or appending to its target) or block on the FIFO forever. :func:`open_regular` opens
such a name only when it is a regular file (or absent), without following links; :func:`fresh_temp`
makes a temporary file under a new name that nothing else can have made (``O_EXCL``).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import secrets
import stat

#: open() errors that mean "the name is there, but not as a regular file we may write".
_NOT_REGULAR = (errno.ELOOP, errno.ENXIO, errno.EISDIR, errno.ENOTDIR)


def open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """``os.open`` of a regular file without following a symbolic link; a file descriptor.

    Raises ``ValueError`` naming ``path`` when it is a link, a FIFO, a folder or another special
    file (a FIFO is opened non-blocking, so it never hangs); other ``OSError`` as they come.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except OSError as err:
        if err.errno in _NOT_REGULAR:
            raise ValueError(f"{path} exists but is not a regular file (a symbolic link, FIFO or folder?); "
                             "refusing to write through it: move it away") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} exists but is not a regular file; refusing to write through it: move it away")
    os.set_blocking(fd, True)
    return fd


def fresh_temp(path: str) -> str:
    """A new empty file ``<path>.<random>.tmp`` made with ``O_EXCL`` (never an existing name or link): ours alone.

    Created with the mode the user's umask gives new files, like the file it will replace.
    """
    while True:
        temp = f"{os.fspath(path)}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666))
            return temp
        except FileExistsError:
            continue


@contextlib.contextmanager
def exclusive(lock_path, busy: str, remove: bool = False):
    """Hold an advisory lock on ``lock_path`` (made if missing, never truncated, never a link) while the block
    runs; ``ValueError(busy)`` at once when another process holds it. The lock goes away with the process,
    even on SIGKILL. With ``remove`` the file is deleted on the way out (if it is empty, as a lock file is),
    and a lock taken on a file that another holder deleted meanwhile is taken again on the new one, so two
    processes never both hold it."""
    import fcntl

    lock_path = os.fspath(lock_path)
    while True:
        handle = open_regular(lock_path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(handle)
            raise ValueError(busy) from err
        try:  # still the file at that name (not one a finishing holder removed)?
            same = os.path.samestat(os.fstat(handle), os.stat(lock_path, follow_symlinks=False))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(handle)
    try:
        yield
    finally:
        if remove and os.fstat(handle).st_size == 0:  # a lock file is empty: anything else is not ours to remove
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


def move_into_place(temp: str, path: str, overwrite: bool, during: str = "it was written") -> None:
    """The finished ``temp`` renamed to ``path``; without ``overwrite`` only if nothing has appeared at ``path``
    while it was written (``FileExistsError``, its message ending "appeared while ``during``; not replaced"):
    a hard link fails on an existing name, where a rename would replace it. ``temp`` is gone afterwards
    either way except on that error."""
    if overwrite:
        os.replace(temp, path)
        return
    appeared = f"{path} appeared while {during}; not replaced (pass overwrite to replace it)"
    try:
        os.link(temp, path)
    except FileExistsError:
        raise FileExistsError(appeared) from None
    except OSError:  # a file system without hard links: a check just before is the best there is
        if os.path.lexists(path):
            raise FileExistsError(appeared) from None
        os.replace(temp, path)
        return
    os.remove(temp)


#: How every HDF5 file begins; an HDF5 temporary file a kill left has at most this much or nothing.
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def stale_temps(path: str, signature: bytes = HDF5_SIGNATURE) -> list:
    """Temporary files :func:`fresh_temp` left beside ``path`` by a kill: named as it names them, regular files,
    and empty or beginning with ``signature`` (what the writer writes first). A user's file of a similar name
    (``scan.h5.2024.tmp``, or any other contents) is not one of them."""
    pattern = re.compile(re.escape(os.path.basename(os.fspath(path))) + r"\.[0-9a-f]{8}\.tmp")
    found = []
    for candidate in glob.glob(glob.escape(os.fspath(path)) + ".*.tmp"):
        if not pattern.fullmatch(os.path.basename(candidate)) or os.path.islink(candidate) \
                or not os.path.isfile(candidate):
            continue
        with open(candidate, "rb") as handle:
            head = handle.read(len(signature))
        if head == signature or not head:
            found.append(candidate)
    return found


def input_at(path: str, inputs) -> str | None:
    """The one of ``inputs`` (paths; None entries skipped) that ``path`` names, the same file by another name
    included; None when it names none of them or does not exist."""
    if not os.path.exists(path):
        return None
    for source in inputs:
        if source is not None and os.path.exists(source) and os.path.samefile(source, path):
            return os.fspath(source)
    return None


HDF5_SUFFIXES = (".h5", ".hdf5")


def check_hdf5_name(path, what: str, hint: str = "") -> None:
    """Refuse, with ``ValueError``, a name for an HDF5 file (``what``: "the result", "the study") that
    does not end in .h5 or .hdf5: the file is HDF5 whatever its name, and a reader would go by the name."""
    if not os.fspath(path).lower().endswith(HDF5_SUFFIXES):
        raise ValueError(f"{what} is an HDF5 file: its name ends in .h5 or .hdf5, got {os.fspath(path)!r}{hint}")


def check_can_create(path) -> None:
    """Refuse, with ``ValueError``, a path whose nearest existing folder (missing folders are made when it is
    written) is not a folder or cannot be written: a writer that makes its folders would fail only then."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path).rstrip(os.sep)))
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into {folder}: it does not exist or is not writable")


def check_new_file(path: str, overwrite: bool, inputs=()) -> None:
    """Refuse, with ``ValueError``, a file to be written that is a folder, exists (without ``overwrite``), is one
    of the command's ``inputs`` (even with ``overwrite``: the input would be gone), or lies in a folder that does
    not exist or cannot be written: checked before any work, so none is wasted."""
    path = os.fspath(path)
    clash = input_at(path, inputs)
    if clash is not None:
        raise ValueError(f"{path} is the input {clash}; writing the result there would replace it: choose another file")
    if os.path.isdir(path) or (os.path.lexists(path) and not overwrite):
        raise ValueError(f"{path} exists" + ("" if os.path.isdir(path) else "; pass --overwrite to replace it"))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into {folder}: it does not exist or is not writable")
