"""LibriSpeech (100 h setup) -> Kaldi data directories, with optional download.

Same directories as ESPnet's ``egs2/librispeech_100/asr1`` stage 1: train_clean_100,
dev_clean, dev_other, test_clean, test_other and dev (= dev_clean + dev_other). As in
Kaldi's ``local/data_prep.sh`` the speaker is ``<reader>-<chapter>`` and the text is the
transcript as distributed (upper case). wav.scp points at the .flac files themselves,
which ESPnet's format stage reads with soundfile (no ``flac -d |`` pipe needed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Dict, List, Tuple

import torch.hub

from dualmode_recipe.kaldi_dir import Utterance, write_data_dir

logger = logging.getLogger(__name__)

OPENSLR_URL = "https://www.openslr.org/resources/12"
PARTS = ("train-clean-100", "dev-clean", "dev-other", "test-clean", "test-other")
#: SHA-256 of the openslr archives (the values torchaudio's LIBRISPEECH dataset checks).
SHA256 = {
    "train-clean-100": "d4ddd1d5a6ab303066f14971d768ee43278a5f2a0aa43dc716b0e64ecbbbf6e2",
    "dev-clean": "76f87d090650617fca0cac8f88b9416e0ebf80350acb97b343a85fa903728ab3",
    "dev-other": "12661c48e8c3fe1de2c1caa4c3e135193bfb1811584f11f569dd12645aa84365",
    "test-clean": "39fde525e59672dc6d1551919b1478f724438a95aa55f874b576be21967e6c23",
    "test-other": "d09c181bba5cf717b3dee7d4d592af11a3ee3a09e08ae025c5506f6ebe961c29",
}
#: Utterances in the complete parts; a different count is reported as a warning.
FULL_SIZES = {"train-clean-100": 28539, "dev-clean": 2703, "dev-other": 2864,
              "test-clean": 2620, "test-other": 2939}
#: Data directories made by concatenating parts.
COMBINED = {"dev": ("dev-clean", "dev-other")}


def data_dir_name(part: str) -> str:
    """Kaldi/ESPnet name of a part's data directory (``dev-clean`` -> ``dev_clean``)."""
    return part.replace("-", "_")


def read_part(part_dir: str | os.PathLike) -> Tuple[List[Utterance], Dict[str, str]]:
    """Utterances and wav.scp entries of one extracted part, ``<spk>/<chapter>/...``.

    Raises:
        FileNotFoundError: no transcript in ``part_dir``, a transcript line without
            its .flac, or a .flac that no transcript lists (the message names it).
        ValueError: a malformed transcript line.
    """
    part_dir = Path(part_dir).resolve()
    transcripts = sorted(part_dir.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise FileNotFoundError(f"no <speaker>/<chapter>/*.trans.txt in {part_dir}")
    utterances: List[Utterance] = []
    wav_scp: Dict[str, str] = {}
    listed = set()
    for trans in transcripts:
        speaker = trans.name[: -len(".trans.txt")]
        with open(trans, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                utt_id, _, text = line.strip().partition(" ")
                if not utt_id:
                    continue
                if not utt_id.startswith(speaker + "-") or not text.strip():
                    raise ValueError(f"{trans}:{lineno}: expected '{speaker}-NNNN TEXT', "
                                     f"got {line.rstrip()!r}")
                flac = trans.parent / f"{utt_id}.flac"
                if not flac.is_file():
                    raise FileNotFoundError(f"{trans}:{lineno}: audio {flac} is missing")
                listed.add(flac)
                utterances.append(Utterance(utt_id, speaker, text.strip(), recording=utt_id))
                wav_scp[utt_id] = str(flac)
    unlisted = sorted(set(part_dir.glob("*/*/*.flac")) - listed)
    if unlisted:
        raise FileNotFoundError(f"{len(unlisted)} audio files have no transcript, e.g. "
                                f"{unlisted[0]} (expected a line in "
                                f"{unlisted[0].parent.name}.trans.txt of its folder)")
    return utterances, wav_scp


def sha256sum(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def extract_part(archive: str | os.PathLike, part: str, corpus_root: str | os.PathLike) -> Path:
    """Unpack an openslr archive so that ``corpus_root/LibriSpeech/<part>`` appears whole.

    The archive is unpacked into a scratch folder first (with tarfile's ``data`` filter,
    which refuses absolute paths and ``..``) and the part moved into place only once
    complete, so an interrupted run never leaves a half-filled part behind. The
    archive's top-level text files (README, SPEAKERS.TXT, ...) are kept if absent.

    Raises:
        ValueError: the archive lacks ``LibriSpeech/<part>``.
        tarfile.FilterError: a member would land outside the scratch folder.
    """
    root = Path(corpus_root)
    target = root / "LibriSpeech" / part
    with tempfile.TemporaryDirectory(dir=root, prefix=f".extract-{part}-") as scratch:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(scratch, filter="data")
        unpacked = Path(scratch) / "LibriSpeech"
        if not (unpacked / part).is_dir():
            raise ValueError(f"{archive}: no LibriSpeech/{part}/ inside the archive")
        target.parent.mkdir(parents=True, exist_ok=True)
        for item in unpacked.iterdir():
            if item.is_file() and not (target.parent / item.name).exists():
                shutil.copy2(item, target.parent / item.name)
        os.replace(unpacked / part, target)
    return target


def fetch_part(
    part: str,
    corpus_root: str | os.PathLike,
    base_url: str = OPENSLR_URL,
    sha256: str | None = None,
) -> Path:
    """Download (unless ``<part>.tar.gz`` is already in ``corpus_root``), check, extract.

    Args:
        part: e.g. ``"dev-clean"``.
        corpus_root: folder receiving the archive and ``LibriSpeech/<part>``.
        base_url: where ``<part>.tar.gz`` is fetched from (any urllib URL).
        sha256: expected checksum; default :data:`SHA256` of ``part``.

    Raises:
        ValueError: checksum mismatch (a file downloaded by this call is deleted).
    """
    root = Path(corpus_root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{part}.tar.gz"
    downloaded = not archive.is_file()
    if downloaded:
        url = f"{base_url.rstrip('/')}/{part}.tar.gz"
        logger.info("downloading %s", url)
        torch.hub.download_url_to_file(url, str(archive), progress=True)
    expected = sha256 if sha256 is not None else SHA256[part]
    actual = sha256sum(archive)
    if actual != expected:
        if downloaded:
            archive.unlink()
        raise ValueError(f"{archive}: SHA-256 is {actual}, expected {expected}"
                         + (" (deleted; download again)" if downloaded else ""))
    logger.info("extracting %s", archive)
    return extract_part(archive, part, root)


def prepare_librispeech(
    corpus_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    download: bool = False,
    base_url: str = OPENSLR_URL,
) -> Dict[str, int]:
    """Write the LibriSpeech-100 data directories from ``corpus_root/LibriSpeech/<part>``.

    With ``download``, parts that are missing are fetched from ``base_url`` first.

    Returns:
        Number of utterances per written data directory.

    Raises:
        FileNotFoundError: a part is missing (and ``download`` is off); the message
            names the expected folders.
    """
    root = Path(corpus_root)
    missing = [p for p in PARTS if not (root / "LibriSpeech" / p).is_dir()]
    if missing and download:
        for part in missing:
            fetch_part(part, root, base_url)
    elif missing:
        raise FileNotFoundError(
            "LibriSpeech parts missing: "
            + ", ".join(str(root / "LibriSpeech" / p) for p in missing)
            + " (expected <speaker>/<chapter>/*.flac and *.trans.txt in each; "
            "use --download to fetch them)")
    out = Path(out_dir)
    parts: Dict[str, Tuple[List[Utterance], Dict[str, str]]] = {}
    counts: Dict[str, int] = {}
    for part in PARTS:
        utts, wav_scp = read_part(root / "LibriSpeech" / part)
        if len(utts) != FULL_SIZES[part]:
            logger.warning("%s has %d utterances, the full part has %d",
                           part, len(utts), FULL_SIZES[part])
        parts[part] = (utts, wav_scp)
        write_data_dir(out / data_dir_name(part), utts, wav_scp)
        counts[data_dir_name(part)] = len(utts)
    for name, members in COMBINED.items():
        utts = [u for p in members for u in parts[p][0]]
        wav_scp = {k: v for p in members for k, v in parts[p][1].items()}
        write_data_dir(out / name, utts, wav_scp)
        counts[name] = len(utts)
    for name, n in counts.items():
        logger.info("%s: %d utterances", out / name, n)
    return counts
