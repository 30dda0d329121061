"""The bundled English manuals corpus and the functions that build it."""

import gzip
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from scripts import prepare_data
from tests.scripts import fake_debs

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DATA_DIR = os.path.join(ROOT, "data")
SCRIPT = os.path.join(ROOT, "scripts", "prepare_data.py")
SPLITS = ("train", "valid", "test")


def tokens(sentence):
    return prepare_data.tokenize_sentence(sentence)


# --- Tokenization ----------------------------------------------------------

def test_punctuation_is_split_off_as_tokens():
    assert tokens('He said: "Stop (now)!"') == [
        "He", "said", ":", '"', "Stop", "(", "now", ")", "!", '"']
    assert tokens("Use a/b; then x=1, y=2.") == [
        "Use", "a", "/", "b", ";", "then", "x", "=", "1", ",", "y", "=",
        "2", "."]


def test_numbers_keep_their_commas_and_periods():
    assert tokens("It costs $1,000.50, or 3.5 times more.") == [
        "It", "costs", "$", "1,000.50", ",", "or", "3.5", "times", "more",
        "."]


def test_abbreviations_keep_their_period():
    assert tokens("Mr. Smith met Dr. J. Doe in the U.S. today.") == [
        "Mr.", "Smith", "met", "Dr.", "J.", "Doe", "in", "the", "U.S.",
        "today", "."]
    # An abbreviation with inner periods ends the sentence with its own.
    assert tokens("It was built in the U.S.") == [
        "It", "was", "built", "in", "the", "U.S."]
    # A nonbreaking prefix at the very end is a word and a period.
    assert tokens("See the list of Vol.") == [
        "See", "the", "list", "of", "Vol", "."]


def test_clitics_quotes_and_dashes():
    assert tokens("Don't use 'it's' \u2014 it\u2019s wrong\u2026") == [
        "Don", "'t", "use", "'", "it", "'s", "'", "--", "it", "'s",
        "wrong", "..."]
    assert tokens("\u201cQuoted\u201d \u2018single\u2019 1990\u20132000") == [
        '"', "Quoted", '"', "'", "single", "'", "1990", "-", "2000"]


def test_words_keep_hyphens_underscores_and_inner_periods():
    assert tokens("Call os.path.join() on well-known snake_case names.") == [
        "Call", "os.path.join", "(", ")", "on", "well-known", "snake_case",
        "names", "."]


def test_unusual_spaces_separate_tokens_and_invisible_ones_vanish():
    sentence = "A\u00a0non-breaking\u200b space, and\ttabs."
    result = tokens(sentence)
    assert result == ["A", "non-breaking", "space", ",", "and", "tabs",
                      "."]
    assert all(token and not any(c.isspace() for c in token)
               for token in result)


# --- Prose filter ----------------------------------------------------------

@pytest.mark.parametrize("sentence, expected", [
    ("The value is 3 .", True),
    ('It is done . "', True),
    ("Is this the one ?", True),
    ("Returns the length", False),  # no final punctuation
    ("The end .", False),  # fewer than 4 tokens
    ("Default : 0 .", False),  # mostly not words
    ("Der Wert wird gesetzt .", False),  # no frequent English word
    ("Die Größe ist für das Übergröße .", False),
    ("\u8fd9 \u662f the \u4e00 \u4e2a \u53e5\u5b50 .", False),
    ("The value is \ufffd .", False),
])
def test_is_prose(sentence, expected):
    assert prepare_data.is_prose(sentence.split()) is expected


def test_is_prose_caps_the_length():
    words = ["the"] * (prepare_data.MANUALS_MAX_TOKENS - 1)
    assert prepare_data.is_prose(words + ["."])
    assert not prepare_data.is_prose(words + ["the", "."])


# --- Pages and sentences ---------------------------------------------------

def test_paragraphs_leave_out_code_tables_and_page_furniture():
    page = """<html><head><title>T</title><script>var p = "<p>";</script>
    </head><body><nav><p>Home page of the manual.</p></nav>
    <div class="sphinxsidebar"><div><p>Nested side bar.</p></div>
    <p>Still the side bar.</p></div>
    <div role="navigation"><p>Next chapter.</p></div>
    <h1>A heading</h1><p>First   <em>para</em>graph,
    two lines.</p><pre><p>code</p></pre>
    <table><tr><td><p>A cell.</p></td></tr></table>
    <ul><li><p>An item.</p></li></ul><p>Open<br/>paragraph
    <div>closed by a block.</div><footer><p>(c) Someone.</p></footer>
    </body></html>"""
    assert prepare_data.prose_paragraphs(page) == [
        "First paragraph, two lines.", "An item.", "Open paragraph"]


def test_a_class_named_header_does_not_hide_the_page():
    # Qt's pages open <div class="header"> and never close it.
    page = ('<div class="header"><div class="main"><ul><li>Qt</li></ul>'
            '</div><div class="content"><p>The body text.</p></div>')
    assert prepare_data.prose_paragraphs(page) == ["The body text."]


def test_paragraphs_become_tokenized_prose_sentences():
    paragraphs = ["The kernel boots. Then it mounts the root file system, "
                  "e.g. ext4, and starts init! Is that all?",
                  "Installation", "See Fig. 3 for the steps."]
    assert prepare_data.prose_sentences(paragraphs) == [
        "The kernel boots .",
        "Then it mounts the root file system , e.g. ext4 , and starts "
        "init !",
        "Is that all ?",
        "See Fig. 3 for the steps ."]


def load_split_into_sentences():
    # The module alone: importing sgmoe.data would load TensorFlow.
    path = os.path.join(ROOT, "sgmoe", "data", "split_into_sentences.py")
    spec = importlib.util.spec_from_file_location("_split_module", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.split_into_sentences


def test_sentences_are_those_of_sgmoe_data_split_into_sentences():
    split_into_sentences = load_split_into_sentences()
    paragraph = ("Mr. Smith arrived at 3.5 p.m. in the U.S. on Jan. 5. "
                 "He sat down. Did he? Yes, he did! It's over.")
    expected = [" ".join(tokens(sentence))
                for sentence in split_into_sentences(paragraph)]
    assert len(expected) == 5
    assert prepare_data.prose_sentences([paragraph]) == [
        sentence for sentence in expected
        if prepare_data.is_prose(sentence.split())]


# --- Split by document -----------------------------------------------------

def test_split_is_by_document_and_shares_no_sentence():
    documents = [(f"pkg/page{i}.html",
                  [f"Sentence {i} of the page .", "A shared line is here ."])
                 for i in range(200)]
    splits = prepare_data.split_documents(documents)
    assert set(splits) == set(SPLITS)
    by_split = {split: set(sentences)
                for split, (_, sentences) in splits.items()}
    for split in SPLITS:
        for i in range(200):
            if f"Sentence {i} of the page ." in by_split[split]:
                assert prepare_data.split_of_sentence(
                    f"pkg/page{i}.html") == split
    # Every page is in exactly one split; the repeated line is kept once,
    # in the first page.
    assert sum(len(s) for s in by_split.values()) == 201
    first_split = prepare_data.split_of_sentence("pkg/page0.html")
    assert "A shared line is here ." in by_split[first_split]
    assert not any(by_split[a] & by_split[b]
                   for a in SPLITS for b in SPLITS if a < b)
    assert sum(count for count, _ in splits.values()) == 200
    # About 1 in 20 documents each for valid and test.
    assert 3 <= splits["test"][0] <= 20 and 3 <= splits["valid"][0] <= 20


def test_documents_without_new_sentences_are_not_counted():
    splits = prepare_data.split_documents([
        ("a", ["One line is here ."]), ("b", ["One line is here ."]),
        ("c", [])])
    assert sum(count for count, _ in splits.values()) == 1


# --- Building from packages ------------------------------------------------

def make_deb(path, package, files, version="1.0"):
    return fake_debs.make_deb(path, package, files, version,
                              compression="gz")


def manual_debs(directory, pages_per_package=3):
    """One fake .deb per package of MANUALS_PACKAGES, at its version."""
    debs = []
    for number, (package, (version, root, left_out)) in enumerate(
            prepare_data.MANUALS_PACKAGES.items()):
        files = {}
        for page in range(pages_per_package):
            files[f"{root}page{page}.html"] = (
                f"<nav><p>Menu of the site.</p></nav><p>This is page "
                f"{page} of package {number}. It has two sentences.</p>"
                f"<pre>x = 1</pre>").encode()
        for part in left_out:
            files[f"{root}{part}x.html"] = b"<p>This is left out.</p>"
        files[f"{root}style.css"] = b"p { color: red; }"
        files["usr/share/doc/other.html"] = b"<p>This is elsewhere.</p>"
        path = os.path.join(directory, f"{package}.deb")
        make_deb(path, package, files, version)
        debs.append(path)
    return debs


def test_build_writes_reproducible_files_from_the_packages(tmp_path):
    debs = manual_debs(str(tmp_path))
    contents = []
    for run in ("first", "second"):
        output = tmp_path / run
        versions, counts = prepare_data.build_manuals(debs, str(output))
        assert versions == {package: version for package, (version, _, _)
                            in prepare_data.MANUALS_PACKAGES.items()}
        contents.append({name: (output / name).read_bytes()
                         for name in sorted(os.listdir(output))})
    first, second = contents
    assert first == second  # byte-identical
    assert sorted(first) == [f"manuals.{split}.txt.gz" for split in
                             ("test", "train", "valid")]
    num_packages = len(prepare_data.MANUALS_PACKAGES)
    lines = {}
    for name, data in first.items():
        assert data[4:8] == b"\0\0\0\0"  # gzip mtime 0
        lines[name.split(".")[1]] = gzip.decompress(data).decode().split(
            "\n")[:-1]
    assert sum(c[0] for c in counts.values()) == 3 * num_packages
    # "It has two sentences ." repeats: kept once, in the first document.
    assert sum(c[1] for c in counts.values()) == 3 * num_packages + 1
    for split, (documents, sentences, tokens_) in counts.items():
        assert sentences == len(lines[split])
        assert tokens_ == sum(len(line.split()) for line in lines[split])
    everything = [line for split in SPLITS for line in lines[split]]
    assert "This is page 0 of package 0 ." in everything
    assert "It has two sentences ." in everything
    assert not any("left out" in line or "elsewhere" in line or
                   "Menu" in line for line in everything)


def test_build_needs_every_package(tmp_path):
    debs = manual_debs(str(tmp_path))
    with pytest.raises(ValueError, match="missing manual packages: "
                       "linux-doc-6.1$"):
        prepare_data.build_manuals(debs[1:], str(tmp_path / "out"))


def test_build_rejects_another_package(tmp_path):
    path = str(tmp_path / "other.deb")
    make_deb(path, "hello", {"usr/share/doc/hello/index.html": b"<p>x</p>"})
    with pytest.raises(ValueError, match="is package hello, expected one"):
        prepare_data.manual_documents(path)


@pytest.mark.subprocess
def test_command_line_builds_the_corpus(tmp_path):
    debs = manual_debs(str(tmp_path), pages_per_package=1)
    output = tmp_path / "data"
    result = subprocess.run(
        [sys.executable, SCRIPT, "--corpora=manuals",
         "--manuals_debs=" + ",".join(debs), f"--output_dir={output}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    num_packages = len(prepare_data.MANUALS_PACKAGES)
    assert (f"manuals: {num_packages} packages, {num_packages} documents, "
            f"{num_packages + 1} sentences") in result.stdout
    assert f"wrote 3 files to {output}" in result.stdout
    assert sorted(os.listdir(output)) == [
        f"manuals.{split}.txt.gz" for split in ("test", "train", "valid")]


# --- The shipped files -----------------------------------------------------

def read_manuals(split):
    with open(os.path.join(DATA_DIR, f"manuals.{split}.txt.gz"),
              "rb") as raw:
        return gzip.decompress(raw.read()).decode("utf-8")


def readme_counts():
    """{split: (documents, sentences, tokens)} from data/README.md."""
    with open(os.path.join(DATA_DIR, "README.md"), encoding="utf-8") as file:
        sections = re.split(r"^## ", file.read(), flags=re.MULTILINE)
    section, = [s for s in sections if s.startswith("English manuals")]
    return {split: tuple(int(n.replace(",", "")) for n in numbers)
            for split, *numbers in re.findall(
                r"^\| (\w+) \| ([\d,]+) \| ([\d,]+) \| ([\d,]+) \|$",
                section, re.MULTILINE)}


def test_shipped_files_have_the_readme_counts():
    counts = readme_counts()
    assert set(counts) == {*SPLITS, "all"}
    texts = {split: read_manuals(split) for split in SPLITS}
    for split, text in texts.items():
        assert text.endswith("\n") and "\n\n" not in text
        # Tokens are separated by single spaces: tokens = spaces + lines.
        assert "  " not in text and "\t" not in text
        sentences = text.count("\n")
        assert counts[split][1:] == (sentences,
                                     text.count(" ") + sentences), split
    for column in range(3):
        assert counts["all"][column] == sum(
            counts[split][column] for split in SPLITS)
    # No sentence of the held-out splits is in the training split.
    held_out = set(texts["valid"].split("\n")[:-1]) | set(
        texts["test"].split("\n")[:-1])
    assert not held_out.intersection(texts["train"].split("\n")[:-1])
