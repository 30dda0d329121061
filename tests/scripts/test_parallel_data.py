"""The bundled parallel text and the functions that extract it."""

import functools
import gzip
import os
import re
import subprocess
import sys

import pytest

from scripts import prepare_data
from tests.scripts.fake_debs import make_deb

pytestmark = pytest.mark.subprocess

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DATA_DIR = os.path.join(ROOT, "data")
SCRIPT = os.path.join(ROOT, "scripts", "prepare_data.py")
SPLITS = ("train", "valid", "test")
# Corpus name -> (source language, target language).
CORPORA = {
    "ding.de-en": ("de", "en"),
    "libreoffice.en-de": ("en", "de"),
    "libreoffice.en-fr": ("en", "fr"),
}


def path_of(directory, corpus, split, language):
    return os.path.join(directory, f"{corpus}.{split}.{language}.gz")


@functools.lru_cache(maxsize=None)
def read_side(corpus, split, language, directory=DATA_DIR):
    with open(path_of(directory, corpus, split, language), "rb") as raw:
        data = gzip.decompress(raw.read())
    # Strict decoding: the files must be valid UTF-8.
    text = data.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def read_pairs(corpus, split, directory=DATA_DIR):
    source, target = (read_side(corpus, split, language, directory)
                      for language in CORPORA.get(corpus, ("de", "en")))
    assert len(source) == len(target), (corpus, split)
    return list(zip(source, target))


@functools.lru_cache(maxsize=None)
def readme_counts():
    """{corpus: {split: (pairs, source words, target words)}} from the README."""
    with open(os.path.join(DATA_DIR, "README.md"), encoding="utf-8") as readme:
        sections = re.split(r"^#+ ", readme.read(), flags=re.MULTILINE)
    counts = {}
    for corpus in CORPORA:
        section, = [s for s in sections
                    if f"`{corpus}." in s.partition("\n")[0]]
        counts[corpus] = {
            split: tuple(int(n.replace(",", "")) for n in numbers)
            for split, *numbers in re.findall(
                r"^\| (\w+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|$", section,
                re.MULTILINE)}
    return counts


# --- The committed files ---------------------------------------------------

@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_counts_match_the_readme(corpus):
    documented = readme_counts()[corpus]
    assert set(documented) == set(SPLITS) | {"all"}
    for split in SPLITS:
        pairs = read_pairs(corpus, split)
        assert documented[split] == (
            len(pairs), sum(len(s.split()) for s, _ in pairs),
            sum(len(t.split()) for _, t in pairs)), split
    assert documented["all"] == tuple(
        sum(documented[split][i] for split in SPLITS) for i in range(3))
    # About 90/5/5.
    assert 0.03 < documented["test"][0] / documented["all"][0] < 0.07


def test_readme_names_the_package_versions():
    with open(os.path.join(DATA_DIR, "README.md"), encoding="utf-8") as readme:
        text = readme.read()
    assert f"`{prepare_data.DING_PACKAGE}` {prepare_data.DING_VERSION}" in text
    assert f"version {prepare_data.LIBREOFFICE_VERSION}" in text


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_lines_are_clean_and_unique(corpus):
    all_pairs = [pair for split in SPLITS for pair in read_pairs(corpus, split)]
    for pair in all_pairs:
        for sentence in pair:
            assert sentence and sentence == " ".join(sentence.split()), pair
        assert pair[0] != pair[1]
    assert len(set(all_pairs)) == len(all_pairs)


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_splits_are_disjoint_by_source_sentence(corpus):
    sources = {split: {s for s, _ in read_pairs(corpus, split)}
               for split in SPLITS}
    assert not sources["train"] & sources["valid"]
    assert not sources["train"] & sources["test"]
    assert not sources["valid"] & sources["test"]
    for split in SPLITS:
        assert {prepare_data.split_of_sentence(s) for s in sources[split]} == {
            split}


@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_files_are_reproducible_gzip(corpus):
    for split in SPLITS:
        for language in CORPORA[corpus]:
            with open(path_of(DATA_DIR, corpus, split, language), "rb") as raw:
                header = raw.read(10)
            # No file name (FLG = 0) and MTIME = 0: rebuilds are byte-identical.
            assert header[:4] == b"\x1f\x8b\x08\x00"
            assert header[4:8] == b"\x00\x00\x00\x00"


def test_known_pairs_are_bundled():
    ding = {pair for split in SPLITS for pair in read_pairs("ding.de-en", split)}
    assert ("Ich bedaure.", "I’m sorry.") in ding
    # The first of two English alternatives ('...confident.; It gives ...').
    assert ("Es gibt ihm mehr Sicherheit.",
            "It makes him feel more confident.") in ding
    german = {pair for split in SPLITS
              for pair in read_pairs("libreoffice.en-de", split)}
    # The default ('Ctrl') variant of a Mac/default switch.
    assert any(en == "Use the shortcut Ctrl + F to quickly open the Find "
               "toolbar." for en, _ in german)


# --- Ding extraction -------------------------------------------------------

DING_TEXT = """\
# Version :: devel 2023-01-30
# License :: GPL Version 2 or later; GNU General Public License
Aal {m} [cook.] | Aal blau :: eel | eel au bleu
Abmachung {f} | Abgemacht! | Das ist abgemacht. :: agreement | Done! | It's a deal.
sich entschuldigen {vr} | Ich bedaure. [geh.] :: to apologize | I’m sorry. [formal]
etw. kaufen | Er kauft etw. :: to buy sth. | He buys sth.
Sicherheit {f} | Es gibt ihm mehr Sicherheit. :: safety | It makes him feel more confident.; It gives him more confidence.
Klingel {f} | Du musst klopfen, die Klingel geht nicht. :: bell | You’ll have to knock; the bell is broken.
vorsehen | Sieh dich vor; Pass auf! :: to beware | Watch out!
dass | Gehen wir davon aus, dass … :: that | Let’s assume that …
"""


def test_ding_pairs_are_the_example_sentences():
    # Not 'Sieh dich vor' (its first alternative is unfinished) nor the
    # '…' fragment.
    assert prepare_data.ding_pairs(DING_TEXT) == [
        ("Abgemacht!", "Done!"),
        ("Das ist abgemacht.", "It's a deal."),
        ("Ich bedaure.", "I’m sorry."),
        ("Es gibt ihm mehr Sicherheit.", "It makes him feel more confident."),
        ("Du musst klopfen, die Klingel geht nicht.",
         "You’ll have to knock; the bell is broken."),
    ]


def test_ding_sentence_pair_rules():
    pair = prepare_data.ding_sentence_pair
    assert pair(" Es ist  kalt. ", " It is cold. ") == ("Es ist kalt.",
                                                        "It is cold.")
    assert pair("„Halt!“", '"Stop!"') == ("„Halt!“", '"Stop!"')
    assert pair("Er kam.; Er erschien.", "He came.") == ("Er kam.", "He came.")
    assert pair("Er kommt {vi}.", "He comes.") is None  # a headword
    assert pair("Er kam.", "he came.") is None  # not capitalised
    assert pair("Er kam", "He came.") is None  # not finished
    assert pair("Ich sehe jdn.", "I see sb.") is None  # a placeholder


def test_ding_rejects_a_line_that_is_not_an_entry():
    with pytest.raises(ValueError, match="line 2 is not a Ding entry"):
        prepare_data.ding_pairs("# header\nA | B :: a\n")


# --- LibreOffice extraction ------------------------------------------------

ENGLISH_PAGE = """<html><body>
<p id="bm_module" class="debug">swriter</p>
<div id="DisplayArea">
<h1 id="hd_id1" dir="auto"><a name="x"></a>Find &amp; Replace</h1>
<p id="par_id2" class="paragraph">Press <span id="swlnsystext_1"
 class="switchinline"><span hidden="true" id="MACtext_1" class="MAC">Command
</span><span hidden="true" id="defaulttext_1"><span class="keycode">Ctrl
</span></span></span> + F<br>to search.</p>
<p id="par_id3">  </p>
<p id="par_id4">123</p>
<p id="par_id5">LibreOffice</p>
<p id="par_id6">Only in English.</p>
<p>No id.</p>
</div></body></html>"""

GERMAN_PAGE = """<html><body>
<h1 id="hd_id1">Suchen &amp; Ersetzen</h1>
<p id="par_id2">Drücken Sie <span hidden="true" id="MACtext_1">Befehl</span>
<span hidden="true" id="defaulttext_1">Strg</span> + F, um zu suchen.</p>
<p id="par_id3"></p>
<p id="par_id4">123</p>
<p id="par_id5">LibreOffice</p>
</body></html>"""


def test_libreoffice_paragraphs_strip_markup_and_switches():
    assert prepare_data.libreoffice_paragraphs(ENGLISH_PAGE) == {
        "hd_id1": "Find & Replace",
        "par_id2": "Press Ctrl + F to search.",
        "par_id3": "",
        "par_id4": "123",
        "par_id5": "LibreOffice",
        "par_id6": "Only in English.",
    }


def test_align_paragraphs_pairs_ids_and_drops_untranslated():
    english = {"text/a.html": prepare_data.libreoffice_paragraphs(ENGLISH_PAGE),
               "text/only_english.html": {"par_id2": "Alone."}}
    german = {"text/a.html": prepare_data.libreoffice_paragraphs(GERMAN_PAGE)}
    assert prepare_data.align_paragraphs(english, german) == [
        ("Find & Replace", "Suchen & Ersetzen"),
        ("Press Ctrl + F to search.", "Drücken Sie Strg + F, um zu suchen."),
    ]


# --- Debian packages and the command line ----------------------------------


def help_deb(directory, package, language_directory, page):
    path = os.path.join(directory, f"{package}.deb")
    make_deb(path, package, {
        f"usr/share/libreoffice/help/{language_directory}/text/a.html":
            page.encode()}, version=prepare_data.LIBREOFFICE_VERSION)
    return path


def test_build_from_packages(tmp_path):
    ding = str(tmp_path / "ding.deb")
    make_deb(ding, "trans-de-en", {"usr/share/trans/de-en": DING_TEXT.encode()},
             version=prepare_data.DING_VERSION)
    out = str(tmp_path / "out")
    version, counts = prepare_data.build_ding(ding, out)
    assert version == "1.9-6"
    assert sum(c[0] for c in counts.values()) == 5
    pairs = [p for split in SPLITS for p in read_pairs("ding.de-en", split, out)]
    assert len(pairs) == 5
    assert ("Ich bedaure.", "I’m sorry.") in pairs

    french_page = GERMAN_PAGE.replace("Suchen", "Rechercher")
    debs = [help_deb(str(tmp_path), "libreoffice-help-en-us", "en-US",
                     ENGLISH_PAGE),
            help_deb(str(tmp_path), "libreoffice-help-de", "de", GERMAN_PAGE),
            help_deb(str(tmp_path), "libreoffice-help-fr", "fr", french_page)]
    _, counts = prepare_data.build_libreoffice(debs, out)
    assert {pair: sum(c[0] for c in split_counts.values())
            for pair, split_counts in counts.items()} == {"en-de": 2,
                                                          "en-fr": 2}
    with pytest.raises(ValueError, match="missing .*libreoffice-help-fr"):
        prepare_data.build_libreoffice(debs[:2], out)


def run_script(*flags):
    return subprocess.run([sys.executable, SCRIPT, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def assert_fails_with(result, message):
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [message], result.stderr


def test_missing_deb_exits_with_one_line(tmp_path):
    missing = tmp_path / "nothing.deb"
    assert_fails_with(
        run_script("--corpora=ding", f"--ding_deb={missing}",
                   f"--output_dir={tmp_path}"),
        f"prepare_data: no such file: {missing}")


def test_empty_and_wrong_files_exit_with_one_line(tmp_path):
    empty = tmp_path / "empty.deb"
    empty.write_bytes(b"")
    assert_fails_with(
        run_script("--corpora=ding", f"--ding_deb={empty}",
                   f"--output_dir={tmp_path}"),
        f"prepare_data: {empty} is not a Debian package (no ar header)")

    undecodable = str(tmp_path / "undecodable.deb")
    make_deb(undecodable, "trans-de-en",
             {"usr/share/trans/de-en": b"Caf\xe9 :: caf\xe9\n"},
             version=prepare_data.DING_VERSION)
    assert_fails_with(
        run_script("--corpora=ding", f"--ding_deb={undecodable}",
                   f"--output_dir={tmp_path}"),
        f"prepare_data: cannot read usr/share/trans/de-en in {undecodable}: "
        "not UTF-8 at byte 3")

    no_sentences = str(tmp_path / "no_sentences.deb")
    make_deb(no_sentences, "trans-de-en",
             {"usr/share/trans/de-en": b"Aal {m} :: eel\n"},
             version=prepare_data.DING_VERSION)
    assert_fails_with(
        run_script("--corpora=ding", f"--ding_deb={no_sentences}",
                   f"--output_dir={tmp_path}"),
        f"prepare_data: usr/share/trans/de-en in {no_sentences} holds no "
        "example sentences")

    assert_fails_with(
        run_script("--corpora=libreoffice",
                   f"--libreoffice_help_debs={no_sentences}",
                   f"--output_dir={tmp_path}"),
        f"prepare_data: {no_sentences} is package trans-de-en, expected one "
        "of libreoffice-help-en-us, libreoffice-help-de, libreoffice-help-fr")


def test_unknown_corpus_exits_with_one_line():
    assert_fails_with(
        run_script("--corpora=brown,wiki"),
        "prepare_data: unknown corpora ['wiki']; expected some of "
        "['brown', 'ding', 'libreoffice', 'manuals']")
