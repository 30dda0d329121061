"""Writing tiny text files for the data tests."""

import gzip


def write_text(path, content):
    """Writes `content` (str lines joined by newlines, or raw bytes) to `path`.

    A list of str is written one per line, each ended by "\\n"; `.gz` paths
    are gzip-compressed. Returns `str(path)`.
    """
    if isinstance(content, (list, tuple)):
        content = "".join(line + "\n" for line in content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path = str(path)
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as file:
        file.write(content)
    return path
