"""Reading the files a spec is made of (the spec, its templates): regular files only,
up to a size, so that `/dev/zero` or a named pipe is refused instead of read forever."""

from __future__ import annotations

import errno
import os
import stat

MAX_FILE_BYTES = 16 * 1024 * 1024  # far beyond any spec or template

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_regular_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file; raises OSError (with `strerror` saying why) for
    anything else, and for a file over MAX_FILE_BYTES."""
    # O_NONBLOCK: opening a named pipe does not wait for a writer (it is refused below).
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "a special file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind})")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    return data
