"""Finding and reading the two sides of parallel text."""

import glob
import os

from sgmoe.data.data_error import DataError
from sgmoe.data.text_files import DEFAULT_MAX_LINE_LENGTH
from sgmoe.data.text_files import check_parallel_files
from sgmoe.data.text_files import read_text_lines


def parallel_files(prefixes, source_language, target_language):
    """Source and target files named PREFIX.LANG (or PREFIX.LANG.gz).

    Parallel corpora are distributed as pairs of line-aligned files that
    differ only in a language suffix: WMT'14's `europarl-v7.fr-en.en` and
    `europarl-v7.fr-en.fr`, the bundled `ding.de-en.train.de.gz` and
    `ding.de-en.train.en.gz`. One comma-separated list of prefixes (globs
    allowed) therefore names both sides: every file matching
    `PREFIX.SOURCE` or `PREFIX.SOURCE.gz` is a source file, and its target
    file is the same name with the target language in place of the source
    language, which must exist.

    Args:
        prefixes: comma-separated paths or globs without the language
            suffix, e.g. `"data/ding.de-en.train"` or
            `"$WMT/europarl-v7.fr-en,$WMT/commoncrawl.fr-en"`.
        source_language: the source suffix, e.g. `"de"`.
        target_language: the target suffix, e.g. `"en"`.

    Returns:
        (source_files, target_files): two lists of paths, the k-th source
        file line-aligned with the k-th target file (the order
        `translation_dataset` pairs them in).

    Raises:
        ValueError: an empty or identical language, or no prefix.
        DataError: a prefix that matches no source file, or a source file
            without its target file.
    """
    for name, language in (("source_language", source_language),
                           ("target_language", target_language)):
        if not isinstance(language, str) or not language or any(
                character in language for character in "/,*?["):
            raise ValueError(
                f"`{name}` must be a language suffix such as 'en', received "
                f"{name}={language!r}.")
    if source_language == target_language:
        raise ValueError(
            "`source_language` and `target_language` must differ, received "
            f"both {source_language!r}.")
    if isinstance(prefixes, str):
        prefixes = prefixes.split(",")
    prefixes = [prefix.strip() for prefix in prefixes if prefix.strip()]
    if not prefixes:
        raise ValueError("`prefixes` must name at least one file prefix, "
                         f"received {prefixes!r}.")
    sources, targets = [], []
    for prefix in prefixes:
        prefix = os.path.expanduser(prefix)
        matches = []
        for ending in ("", ".gz"):
            matches += glob.glob(f"{prefix}.{source_language}{ending}")
        matches = sorted(path for path in set(matches)
                         if not os.path.isdir(path))
        if not matches:
            raise DataError(f"{prefix}.{source_language}[.gz]: no file "
                            "matches this pattern")
        for source in matches:
            if source in sources:
                continue
            target = _swap_language(source, source_language,
                                    target_language)
            if not os.path.isfile(target):
                raise DataError(f"{source}: no target file {target}")
            sources.append(source)
            targets.append(target)
    return sources, targets


def _swap_language(path, source_language, target_language):
    ending = ".gz" if path.endswith(".gz") else ""
    stem = path[:len(path) - len(ending) - len(source_language)]
    return f"{stem}{target_language}{ending}"


def read_sentence_pairs(source_files, target_files, limit=None, *,
                        max_line_length=DEFAULT_MAX_LINE_LENGTH,
                        on_malformed="raise"):
    """The (source, target) line pairs of parallel files, in file order.

    Every aligned pair of files is first checked whole with
    `check_parallel_files` (one read of each file): line i of a source
    file must be line i of its target file, so two files with different
    numbers of lines raise instead of being scored out of alignment, even
    when `limit` stops the pairs before the files end. Pairs with a blank
    side are then left out, as `translation_dataset` leaves them out, and
    under `on_malformed="skip"` pairs with a malformed side; nothing else
    is (no length limit), so an evaluation scores every sentence.

    Args:
        source_files: paths of the source side (as `parallel_files` gives).
        target_files: the aligned target files, as many as `source_files`.
        limit: keep only the first `limit` pairs; None or 0 keeps all.
        max_line_length: the longest allowed line, in bytes.
        on_malformed: `"raise"` or `"skip"` for lines that are not UTF-8
            or are longer than `max_line_length` (see
            `sgmoe.data.text_files`; skipped lines are counted and
            logged).

    Returns:
        A list of (source, target) strings.

    Raises:
        DataError: an unreadable or empty file, a line that is not UTF-8
            or is longer than `max_line_length` bytes under
            `on_malformed="raise"`, aligned files whose line counts differ
            (the message names both files and both counts), or no pair at
            all.
        ValueError: `source_files` and `target_files` differ in length.
    """
    check_parallel_files(source_files, target_files, max_line_length,
                         on_malformed)
    pairs = []
    for source, target in zip(source_files, target_files):
        if limit and len(pairs) >= limit:
            break
        for pair in zip(*(read_text_lines(path, max_line_length,
                                          on_malformed, keep_alignment=True)
                          for path in (source, target))):
            if None in pair:
                continue
            if pair[0].strip() and pair[1].strip():
                pairs.append(pair)
                if len(pairs) == limit:
                    break
    if not pairs:
        raise DataError(f"{','.join(source_files)}: no sentence pairs")
    return pairs
