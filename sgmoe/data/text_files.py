"""Finding and checking the text files that the pipelines read.

Every pipeline of `sgmoe.data` first expands its file patterns and checks
each file here, in Python, before it builds a `tf.data` pipeline: problems
then surface as one `DataError` naming the file and line, not as a
TensorFlow error in the middle of training.

Malformed lines are lines that are not valid UTF-8 or are longer than
`max_line_length` bytes (the line ending not counted). `on_malformed`
chooses what happens to them:

- `"raise"` (the default): the first one raises a `DataError` with the
  file, the line number and the problem.
- `"skip"`: they are left out, counted in the file's `TextFileSummary` and
  logged once per file; the `tf.data` pipelines skip exactly the same
  lines.

A file that cannot be read (missing, a directory, a broken gzip stream) or
that has no usable line (empty, blank lines only, or every line skipped)
always raises.
"""

import contextlib
import dataclasses
import glob
import gzip
import logging
import os
import zlib

from sgmoe.data.data_error import DataError

DEFAULT_MAX_LINE_LENGTH = 10_000
ON_MALFORMED_CHOICES = ("raise", "skip")
_GLOB_CHARACTERS = frozenset("*?[")


@dataclasses.dataclass
class TextFileSummary:
    """Line counts of one checked text file.

    Attributes:
        path: the file.
        lines: all lines, blank and skipped ones included (what a parallel
            file must match).
        blank_lines: lines holding only whitespace.
        skipped_not_utf8: lines left out because they are not UTF-8.
        skipped_too_long: lines left out because they are longer than
            `max_line_length` bytes.
    """

    path: str
    lines: int = 0
    blank_lines: int = 0
    skipped_not_utf8: int = 0
    skipped_too_long: int = 0

    @property
    def skipped_lines(self):
        return self.skipped_not_utf8 + self.skipped_too_long

    @property
    def usable_lines(self):
        """Lines that hold text and were not skipped."""
        return self.lines - self.blank_lines - self.skipped_lines


def expand_file_patterns(file_patterns):
    """Expands comma-separated globs into a list of existing files.

    Each pattern's matches are sorted; patterns keep their order and a file
    named twice is kept once, at its first place. So
    `"train/europarl.de-en.en,train/commoncrawl.de-en.en"` and the same
    with `.de` list line-aligned files in the same order. Files ending in
    `.gz` are read as gzip, all others as plain text. Commas cannot appear
    in file names.

    Args:
        file_patterns: a string of comma-separated paths or globs, or a list
            of such strings.

    Returns:
        A list of file paths.

    Raises:
        DataError: a path that does not exist or is not a file, a glob that
            matches no file, or no pattern at all.

    Example:

    expand_file_patterns("lm1b/training-*/news.en-*,data/extra.txt.gz")
    # ['lm1b/training-monolingual.tokenized.shuffled/news.en-00001-of-00100',
    #  ..., 'data/extra.txt.gz']
    """
    if isinstance(file_patterns, (str, os.PathLike)):
        file_patterns = [file_patterns]
    patterns = [pattern.strip()
                for item in file_patterns
                for pattern in os.fspath(item).split(",") if pattern.strip()]
    if not patterns:
        raise DataError(f"no file pattern given (received {file_patterns!r})")
    files = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if _GLOB_CHARACTERS.isdisjoint(expanded):
            if not os.path.exists(expanded):
                raise DataError(f"{pattern}: no such file")
            if not os.path.isfile(expanded):
                raise DataError(f"{pattern}: not a file")
            matches = [expanded]
        else:
            matches = sorted(path for path in glob.glob(expanded)
                             if os.path.isfile(path))
            if not matches:
                raise DataError(f"{pattern}: no file matches this pattern")
        for path in matches:
            if path not in files:
                files.append(path)
    return files


def check_on_malformed(on_malformed):
    if on_malformed not in ON_MALFORMED_CHOICES:
        raise ValueError(
            f"`on_malformed` must be one of {ON_MALFORMED_CHOICES}, "
            f"received on_malformed={on_malformed!r}.")
    return on_malformed


def check_max_line_length(max_line_length):
    if (isinstance(max_line_length, bool)
            or not isinstance(max_line_length, int) or max_line_length < 1):
        raise ValueError(
            "`max_line_length` must be a positive integer (bytes), received "
            f"max_line_length={max_line_length!r}.")
    return max_line_length


def read_text_lines(path, max_line_length=DEFAULT_MAX_LINE_LENGTH,
                    on_malformed="raise", summary=None, *,
                    keep_alignment=False):
    """Yields the lines of one text file as `str`, without line endings.

    Lines are split at `\\n` (a `\\r` before it is dropped), as
    `tf.data.TextLineDataset` splits them. Blank lines are yielded;
    malformed lines raise or are skipped (see the module docstring). A line
    is read at most `max_line_length + 2` bytes at a time, so a huge file
    without newlines fails fast instead of filling memory.

    Args:
        path: a plain or `.gz` text file.
        max_line_length: the longest allowed line, in bytes of UTF-8.
        on_malformed: `"raise"` or `"skip"`.
        summary: an optional `TextFileSummary` whose counts are updated
            while reading.
        keep_alignment: yield None in place of each skipped line, so the
            k-th item is line k (parallel files stay line-aligned).

    Raises:
        DataError: the file cannot be read, or a malformed line under
            `on_malformed="raise"`.
    """
    max_line_length = check_max_line_length(max_line_length)
    check_on_malformed(on_malformed)
    if summary is None:
        summary = TextFileSummary(path)
    with _reading(path) as file:
        for raw in _raw_lines(file, max_line_length):
            summary.lines += 1
            if raw is None:
                if on_malformed == "raise":
                    raise DataError(
                        f"{path}:{summary.lines}: line longer than "
                        f"max_line_length={max_line_length} bytes (raise "
                        "the limit, or skip such lines with "
                        "on_malformed='skip')")
                summary.skipped_too_long += 1
                if keep_alignment:
                    yield None
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                if on_malformed == "raise":
                    raise DataError(
                        f"{path}:{summary.lines}: not valid UTF-8 (byte "
                        f"0x{raw[error.start]:02x} at byte "
                        f"{error.start + 1} of the line; skip such lines "
                        "with on_malformed='skip')") from None
                summary.skipped_not_utf8 += 1
                if keep_alignment:
                    yield None
                continue
            if not text.split():
                summary.blank_lines += 1
            yield text


@contextlib.contextmanager
def _reading(path):
    """The file open for reading bytes (gzip when `.gz`); failures to open
    or read it, while in the block, become one `DataError` naming it."""
    try:
        with (gzip.open if path.endswith(".gz") else open)(path, "rb") as file:
            yield file
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read: {error}") from None


def count_lines(file_patterns, limit=None):
    """Lines of the files (blank and malformed ones included), counting no
    further than `limit`: a cheap size for a shuffle block.

    Args:
        file_patterns: as `expand_file_patterns` takes them.
        limit: stop at this many lines; None counts them all.

    Returns:
        min(lines, limit).

    Raises:
        DataError: no file matches, or a file cannot be read.
    """
    count = 0
    for path in expand_file_patterns(file_patterns):
        with _reading(path) as file:
            for _ in file:
                count += 1
                if limit is not None and count >= limit:
                    return count
    return count


def _raw_lines(file, max_line_length):
    """Yields each line's bytes, or None for a line over the limit."""
    limit = max_line_length + 2  # room for "\r\n"
    while True:
        chunk = file.readline(limit)
        if not chunk:
            return
        if not chunk.endswith(b"\n") and len(chunk) == limit:
            while chunk and not chunk.endswith(b"\n"):
                chunk = file.readline(1 << 20)
            yield None
            continue
        line = chunk[:-1] if chunk.endswith(b"\n") else chunk
        if line.endswith(b"\r"):
            line = line[:-1]
        yield None if len(line) > max_line_length else line


def check_text_files(paths, max_line_length=DEFAULT_MAX_LINE_LENGTH,
                     on_malformed="raise"):
    """Reads every file once and returns its `TextFileSummary`.

    Args:
        paths: file paths, e.g. from `expand_file_patterns`.
        max_line_length: the longest allowed line, in bytes of UTF-8.
        on_malformed: `"raise"` or `"skip"` (see the module docstring);
            skipped lines are logged once per file.

    Returns:
        A list of `TextFileSummary`, one per path.

    Raises:
        DataError: a file cannot be read or has no usable line, or a
            malformed line under `on_malformed="raise"`.
    """
    summaries = []
    for path in paths:
        summary = TextFileSummary(path)
        for _ in read_text_lines(path, max_line_length, on_malformed, summary):
            pass
        check_usable(summary)
        if summary.skipped_lines:
            logging.getLogger("sgmoe.data").warning(
                "%s: skipped %d of %d lines (%d not UTF-8, %d longer than %d "
                "bytes)", path, summary.skipped_lines, summary.lines,
                summary.skipped_not_utf8, summary.skipped_too_long,
                max_line_length)
        summaries.append(summary)
    return summaries


def check_parallel_files(source_files, target_files,
                         max_line_length=DEFAULT_MAX_LINE_LENGTH,
                         on_malformed="raise"):
    """Checks line-aligned parallel files (see `check_text_files`).

    Args:
        source_files: paths of the source side.
        target_files: paths of the target side, the k-th aligned with the
            k-th source file.

    Returns:
        A list of (source, target) `TextFileSummary` pairs.

    Raises:
        DataError: as `check_text_files`, or two aligned files with
            different numbers of lines.
    """
    summaries = []
    for source, target in zip(source_files, target_files, strict=True):
        source_summary, target_summary = check_text_files(
            [source, target], max_line_length, on_malformed)
        if source_summary.lines != target_summary.lines:
            raise DataError(
                f"{source}: {source_summary.lines} lines, but {target}: "
                f"{target_summary.lines} lines (parallel files must be "
                "line-aligned)")
        summaries.append((source_summary, target_summary))
    return summaries


def check_usable(summary):
    """Raises a DataError when a checked file has no usable line."""
    if summary.lines == 0:
        raise DataError(f"{summary.path}: empty file")
    if summary.usable_lines == 0:
        if summary.skipped_lines:
            raise DataError(
                f"{summary.path}: no usable line ({summary.skipped_lines} of "
                f"{summary.lines} lines skipped as malformed)")
        raise DataError(f"{summary.path}: holds only blank lines")
