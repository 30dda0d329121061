"""Writing files and directories so that a kill never leaves half of one.

A reader sees either the old version or the whole new one: data goes to a
temporary sibling (same directory, so the same file system), is fsynced,
and `os.replace` renames it into place; the directory is fsynced after the
rename so the new name survives a power cut.
"""

import os
import shutil
import uuid

TEMPORARY_PREFIX = ".tmp-"


def write_bytes_atomically(path, data):
    """Writes `data` (bytes) to `path`, replacing it atomically.

    Creates the parent directory. The temporary file is removed if the
    write fails (e.g. a full disk), and the old file is left as it was.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(
        directory, f"{TEMPORARY_PREFIX}{os.path.basename(path)}-"
        f"{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise
    fsync_directory(directory)


def write_text_atomically(path, text):
    """`write_bytes_atomically` of `text` encoded as UTF-8."""
    write_bytes_atomically(path, text.encode("utf-8"))


def replace_directory(write, path):
    """Calls `write(temporary_dir)`, then swaps the result in at `path`.

    `write` fills a fresh temporary sibling of `path`; every file in it is
    then fsynced and it replaces `path`. An old `path` is first renamed
    away and deleted only once the new one is in place, so at any moment
    `path` is either missing, the whole old directory or the whole new
    one, never a mixture. If `write` fails, `path` is left as it was.
    """
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(path)
    temporary = os.path.join(parent, f"{TEMPORARY_PREFIX}{name}-"
                             f"{uuid.uuid4().hex[:8]}")
    old = None
    try:
        write(temporary)
        for root, _, files in os.walk(temporary):
            for file_name in files:
                _fsync_file(os.path.join(root, file_name))
            fsync_directory(root)
        if os.path.lexists(path):
            old = os.path.join(parent, f"{TEMPORARY_PREFIX}old-{name}-"
                               f"{uuid.uuid4().hex[:8]}")
            os.replace(path, old)
        os.replace(temporary, path)
        fsync_directory(parent)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        if old is not None and not os.path.lexists(path):
            os.replace(old, path)  # the swap failed: put the old one back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fsync_directory(path):
    """Makes renames into `path` durable (a no-op where unsupported)."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _fsync_file(path):
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass
