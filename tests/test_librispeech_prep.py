"""LibriSpeech-100 preparation on a fake tree; archive checksum and extraction."""

from __future__ import annotations

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest
from espnet2.fileio.sound_scp import SoundScpReader

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.corpora.librispeech import (
    extract_part,
    fetch_part,
    prepare_librispeech,
    sha256sum,
)
from fake_corpora import make_fake_librispeech

DIRS = ("train_clean_100", "dev_clean", "dev_other", "test_clean", "test_other", "dev")
FILES = ("wav.scp", "text", "utt2spk", "spk2utt")


def _assert_dirs(out: Path, expected: dict) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(DIRS)
    for name in DIRS:
        for fname in FILES:
            assert (out / name / fname).read_text() == expected[name][fname], \
                f"{name}/{fname}"
        assert not (out / name / "segments").exists()


def test_prepare_matches_expected(tmp_path):
    expected = make_fake_librispeech(tmp_path / "corpus")
    recipe_main(["prep_librispeech", "--corpus_root", str(tmp_path / "corpus"),
                                "--out", str(tmp_path / "data")])
    _assert_dirs(tmp_path / "data", expected)
    base = (tmp_path / "corpus" / "LibriSpeech").resolve()
    assert (tmp_path / "data" / "dev" / "text").read_text() == (
        "116-288045-0000 AS I APPROACHED THE CITY\n"
        "1272-128104-0000 MISTER QUILTER IS THE APOSTLE\n"
        "1272-128104-0001 NOR IS MISTER QUILTER'S MANNER\n")
    assert (tmp_path / "data" / "train_clean_100" / "wav.scp").read_text() == (
        f"103-1240-0000 {base}/train-clean-100/103/1240/103-1240-0000.flac\n"
        f"103-1240-0001 {base}/train-clean-100/103/1240/103-1240-0001.flac\n"
        f"19-198-0001 {base}/train-clean-100/19/198/19-198-0001.flac\n")
    assert (tmp_path / "data" / "train_clean_100" / "spk2utt").read_text() == (
        "103-1240 103-1240-0000 103-1240-0001\n"
        "19-198 19-198-0001\n")
    # ESPnet's own wav.scp reader opens the .flac entries.
    rate, samples = SoundScpReader(str(tmp_path / "data" / "dev" / "wav.scp"))[
        "1272-128104-0001"]
    assert rate == 16000 and samples.shape == (8000,)


def test_missing_part_names_expected_folder(tmp_path):
    make_fake_librispeech(tmp_path / "corpus")
    shutil.rmtree(tmp_path / "corpus" / "LibriSpeech" / "test-other")
    with pytest.raises(SystemExit) as err:
        recipe_main(["prep_librispeech", "--corpus_root", str(tmp_path / "corpus"),
                                    "--out", str(tmp_path / "data")])
    message = str(err.value.code)
    assert f"{tmp_path}/corpus/LibriSpeech/test-other" in message and "--download" in message


def test_transcript_without_audio(tmp_path):
    make_fake_librispeech(tmp_path / "corpus")
    flac = tmp_path / "corpus" / "LibriSpeech" / "dev-clean" / "1272" / "128104" / \
        "1272-128104-0001.flac"
    flac.unlink()
    with pytest.raises(FileNotFoundError, match=r"1272-128104\.trans\.txt:2: audio .* missing"):
        prepare_librispeech(tmp_path / "corpus", tmp_path / "data")


def test_audio_without_transcript(tmp_path):
    make_fake_librispeech(tmp_path / "corpus")
    folder = tmp_path / "corpus" / "LibriSpeech" / "test-clean" / "1089" / "134686"
    shutil.copy(folder / "1089-134686-0000.flac", folder / "1089-134686-0007.flac")
    with pytest.raises(FileNotFoundError, match="1089-134686-0007.flac"):
        prepare_librispeech(tmp_path / "corpus", tmp_path / "data")


def _make_archive(corpus: Path, part: str, path: Path) -> bytes:
    """tar.gz of corpus/LibriSpeech/<part> plus a README, as openslr ships them."""
    (corpus / "LibriSpeech" / "README.TXT").write_text("fake\n")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(corpus / "LibriSpeech" / "README.TXT", "LibriSpeech/README.TXT")
        tar.add(corpus / "LibriSpeech" / part, f"LibriSpeech/{part}")
    return path.read_bytes()


def test_sha256sum_known_vector(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")
    assert sha256sum(tmp_path / "abc") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_download_checks_and_extracts_missing_part(tmp_path):
    expected = make_fake_librispeech(tmp_path / "source")
    server = tmp_path / "server"
    server.mkdir()
    data = _make_archive(tmp_path / "source", "dev-other", server / "dev-other.tar.gz")
    corpus = tmp_path / "corpus"
    shutil.copytree(tmp_path / "source", corpus)
    shutil.rmtree(corpus / "LibriSpeech" / "dev-other")
    (corpus / "LibriSpeech" / "README.TXT").unlink()

    part = fetch_part("dev-other", corpus, base_url=server.as_uri(),
                      sha256=hashlib.sha256(data).hexdigest())
    assert part == corpus / "LibriSpeech" / "dev-other"
    assert (corpus / "LibriSpeech" / "README.TXT").read_text() == "fake\n"
    assert (corpus / "dev-other.tar.gz").read_bytes() == data
    assert sorted(p.name for p in corpus.iterdir()) == ["LibriSpeech", "dev-other.tar.gz"]
    prepare_librispeech(corpus, tmp_path / "data")
    expected = {k: {f: c.replace(str((tmp_path / "source").resolve()), str(corpus.resolve()))
                    for f, c in v.items()} for k, v in expected.items()}
    _assert_dirs(tmp_path / "data", expected)


def test_prepare_with_download_fetches_only_missing_parts(tmp_path, monkeypatch):
    make_fake_librispeech(tmp_path / "corpus")
    shutil.rmtree(tmp_path / "corpus" / "LibriSpeech" / "dev-clean")
    fetched = []
    monkeypatch.setattr("dualmode_recipe.corpora.librispeech.fetch_part",
                        lambda part, root, url: fetched.append((part, root, url)))
    with pytest.raises(FileNotFoundError):  # the stub extracts nothing
        prepare_librispeech(tmp_path / "corpus", tmp_path / "data", download=True)
    assert fetched == [("dev-clean", tmp_path / "corpus",
                        "https://www.openslr.org/resources/12")]


def test_bad_checksum_deletes_download(tmp_path):
    make_fake_librispeech(tmp_path / "source")
    server = tmp_path / "server"
    server.mkdir()
    _make_archive(tmp_path / "source", "test-clean", server / "test-clean.tar.gz")
    with pytest.raises(ValueError, match="SHA-256 is .*, expected 0{64} \\(deleted"):
        fetch_part("test-clean", tmp_path / "corpus", base_url=server.as_uri(),
                   sha256="0" * 64)
    assert list((tmp_path / "corpus").iterdir()) == []


def test_bad_checksum_keeps_user_archive(tmp_path):
    (tmp_path / "corpus").mkdir()
    archive = tmp_path / "corpus" / "dev-clean.tar.gz"
    archive.write_bytes(b"not the real archive")
    with pytest.raises(ValueError, match="dev-clean.tar.gz: SHA-256 is"):
        fetch_part("dev-clean", tmp_path / "corpus")  # default checksum table
    assert archive.exists()


def test_extract_refuses_paths_outside(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    (tmp_path / "corpus").mkdir()
    with pytest.raises(tarfile.FilterError):
        extract_part(archive, "dev-clean", tmp_path / "corpus")
    assert list((tmp_path / "corpus").iterdir()) == []  # nothing escaped, no scratch left


def test_extract_requires_the_part(tmp_path):
    make_fake_librispeech(tmp_path / "source")
    archive = tmp_path / "wrong.tar.gz"
    _make_archive(tmp_path / "source", "dev-clean", archive)
    (tmp_path / "corpus").mkdir()
    with pytest.raises(ValueError, match="no LibriSpeech/test-other/ inside the archive"):
        extract_part(archive, "test-other", tmp_path / "corpus")
    assert not (tmp_path / "corpus" / "LibriSpeech" / "test-other").exists()
