"""Both sides of parallel text from one prefix."""

import gzip

import pytest

from sgmoe.data import DataError
from sgmoe.data import parallel_files


def write(path, text, compress=False):
    if compress:
        with gzip.open(path, "wt", encoding="utf-8") as file:
            file.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def test_prefixes_pair_source_and_target_files_in_order(tmp_path):
    for name in ("europarl.fr-en", "commoncrawl.fr-en"):
        write(tmp_path / f"{name}.en", "a\n")
        write(tmp_path / f"{name}.fr", "b\n")
    write(tmp_path / "news.fr-en.en.gz", "c\n", compress=True)
    write(tmp_path / "news.fr-en.fr.gz", "d\n", compress=True)
    write(tmp_path / "other.de", "e\n")  # neither language: not listed
    sources, targets = parallel_files(
        f"{tmp_path}/news.fr-en, {tmp_path}/*.fr-en", "en", "fr")
    assert [path.rsplit("/", 1)[1] for path in sources] == [
        "news.fr-en.en.gz", "commoncrawl.fr-en.en", "europarl.fr-en.en"]
    assert [path.rsplit("/", 1)[1] for path in targets] == [
        "news.fr-en.fr.gz", "commoncrawl.fr-en.fr", "europarl.fr-en.fr"]
    # The other direction swaps the lists (sorted by name: plain before .gz).
    assert parallel_files([f"{tmp_path}/*.fr-en"], "fr", "en") == (
        targets[1:] + targets[:1], sources[1:] + sources[:1])


def test_bundled_ding_split():
    sources, targets = parallel_files("data/ding.de-en.valid", "de", "en")
    assert sources == ["data/ding.de-en.valid.de.gz"]
    assert targets == ["data/ding.de-en.valid.en.gz"]


def test_missing_files_raise_data_errors(tmp_path):
    with pytest.raises(DataError, match=r"nothing\.en\[\.gz\]: no file"):
        parallel_files(f"{tmp_path}/nothing", "en", "fr")
    write(tmp_path / "lonely.en", "a\n")
    with pytest.raises(DataError, match=r"lonely\.en: no target file .*"
                                        r"lonely\.fr"):
        parallel_files(f"{tmp_path}/lonely", "en", "fr")


@pytest.mark.parametrize("languages, argument", [
    (("", "fr"), "source_language"), (("en", "f*"), "target_language"),
    (("en", "en"), "must differ")])
def test_invalid_languages_raise_value_errors(languages, argument):
    with pytest.raises(ValueError, match=argument):
        parallel_files("data/ding.de-en.valid", *languages)
    with pytest.raises(ValueError, match="prefixes"):
        parallel_files(" , ", "en", "fr")


def test_read_sentence_pairs_keeps_file_order_and_drops_blank_pairs(
        tmp_path):
    from sgmoe.data import read_sentence_pairs

    write(tmp_path / "a.en", "one\n\nthree\nfour\n")
    write(tmp_path / "a.fr", "un\ndeux\n \nquatre\n")
    write(tmp_path / "b.en.gz", "five\n", compress=True)
    write(tmp_path / "b.fr.gz", "cinq\n", compress=True)
    sources, targets = parallel_files(f"{tmp_path}/a,{tmp_path}/b", "en",
                                      "fr")
    assert read_sentence_pairs(sources, targets) == [
        ("one", "un"), ("four", "quatre"), ("five", "cinq")]
    assert read_sentence_pairs(sources, targets, limit=2) == [
        ("one", "un"), ("four", "quatre")]
    write(tmp_path / "c.en", "\nx\n")
    write(tmp_path / "c.fr", "y\n\n")
    with pytest.raises(DataError, match=r"c\.en: no sentence pairs"):
        read_sentence_pairs(*parallel_files(f"{tmp_path}/c", "en", "fr"))


def test_read_sentence_pairs_rejects_files_of_different_lengths(tmp_path):
    from sgmoe.data import read_sentence_pairs

    write(tmp_path / "a.en", "one\ntwo\n")
    write(tmp_path / "a.fr", "un\ndeux\n")
    # Line 3 of b.en has no partner: zipping would score 2 pairs silently.
    write(tmp_path / "b.en.gz", "three\nfour\nfive\n", compress=True)
    write(tmp_path / "b.fr.gz", "trois\nquatre\n", compress=True)
    sources, targets = parallel_files(f"{tmp_path}/a,{tmp_path}/b", "en",
                                      "fr")
    message = (rf"^{tmp_path}/b\.en\.gz: 3 lines, but {tmp_path}/b\.fr\.gz: "
               r"2 lines \(parallel files must be line-aligned\)$")
    with pytest.raises(DataError, match=message):
        read_sentence_pairs(sources, targets)
    # A limit that stops before the misaligned file still checks it.
    with pytest.raises(DataError, match=message):
        read_sentence_pairs(sources, targets, limit=1)
    write(tmp_path / "b.fr.gz", "trois\nquatre\ncinq\n", compress=True)
    assert read_sentence_pairs(sources, targets, limit=3) == [
        ("one", "un"), ("two", "deux"), ("three", "trois")]
