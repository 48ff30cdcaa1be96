"""Fake CSJ and LibriSpeech trees for tests, with their expected data directories.

The expected files are written by hand from the SDB content below, applying the
Kaldi/ESPnet rules described in ``dualmode_recipe.corpora.csj``; nothing here calls
the preparation code. The CSJ
expectations hold for ``--train_dev_size 3 --dup_cap 2`` (``FakeCsjExpected``).

Usage in a test::

    expected = make_fake_csj(tmp_path / "CSJ", version="usb", encoding="shift_jis")
    prepare_csj(tmp_path / "CSJ", "usb", out, "all", expected.train_dev_size,
                expected.dup_cap)
    assert (out / "train_nodup" / "text").read_text() == \
        expected.dirs["all"]["train_nodup"]["text"]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import soundfile

SAMPLE_RATE = 16000

# ---------------------------------------------------------------------------------
# CSJ
# ---------------------------------------------------------------------------------
# A unit: (unit id, start, end, channel, words); a word: (column 5, POS) or
# (column 5, POS, column 9). Column 9 defaults to column 5.
Word = Tuple[str, ...]
Unit = Tuple[str, str, str, str, List[Word]]

_A01F0055: List[Unit] = [
    # U1: 0001 + 0002 (pause 0.3 s) -> えーそれでこ今日は
    ("0001", "00001.000", "00002.000", "L", [("(F えー)", "感動詞"), ("それ", "代名詞"),
                                             ("で", "接続詞")]),
    ("0002", "00002.300", "00003.100", "L", [("(D こ)", "言いよどみ"), ("今日", "名詞"),
                                             ("は", "助詞")]),
    # U2: pause 0.6 s starts it; 0004 follows after exactly 0.5 s (merged). The A-tag of
    # 0004 spans two words: the first is dropped, the second gives ＡＤ.
    ("0003", "00003.700", "00004.500", "L", [("(A エーエスアール;ＡＳＲ)", "名詞", "ＡＳＲ"),
                                             ("の", "助詞")]),
    ("0004", "00005.000", "00005.600", "L", [("(A エー", "名詞", "Ａ"),
                                             ("ディー;ＡＤ)", "名詞", "Ｄ"),
                                             ("変換", "名詞")]),
    # U3: 6.5 s .. 17.0 s; 0008 would start at 17.2 s after 10.5 s > 10 s: new utterance.
    # んーー -> ん, K tag keeps both sides, trailing ・ dropped, <笑> has no POS.
    ("0005", "00006.500", "00010.000", "L", [("(F うんーー)", "感動詞"), ("(K へ;変)", "名詞"),
                                             ("(? あの)", "連体詞")]),
    ("0006", "00010.200", "00014.000", "L", [("一・", "名詞", "一"), ("点", "名詞")]),
    ("0007", "00014.100", "00017.000", "L", [("(笑 そう)", "副詞"), ("<笑>", "")]),
    # U4: 0008 + 0009 contains × -> dropped as a whole.
    ("0008", "00017.200", "00018.000", "L", [("ええ", "感動詞")]),
    ("0009", "00018.100", "00018.900", "L", [("(R ××)", "名詞"), ("さん", "接尾辞")]),
    # U5: numeral A-tag -> column 9.
    ("0010", "00019.500", "00020.000", "L", [("(A ニジュウ;２０)", "名詞", "二十"),
                                             ("年", "名詞")]),
    # 0011 keeps no word, so 0012 is 0.9 s after U5 (not 0.3 s after 0011): U6 alone.
    ("0011", "00020.400", "00020.600", "L", [("<H>", "")]),
    ("0012", "00020.900", "00021.500", "L", [("はい", "感動詞"), ("(笑 ふふ)", "")]),
]
_A02M0077: List[Unit] = [  # four isolated はい (duplicate cap)
    ("0001", "00001.000", "00001.500", "L", [("はい", "感動詞")]),
    ("0002", "00003.000", "00003.500", "L", [("はい", "感動詞")]),
    ("0003", "00005.000", "00005.500", "L", [("はい", "感動詞")]),
    ("0004", "00007.000", "00007.500", "L", [("はい", "感動詞")]),
]
_S01F0003: List[Unit] = [  # 1.003 s -> 1002 ms (int(1000 * 1.003) truncates)
    ("0001", "00000.300", "00001.003", "L", [("(F あのー)", "感動詞"), ("皆さん", "名詞")]),
]
_D01F0002: List[Unit] = [  # dialogue: channel changes split, same channel merges
    ("0001", "00000.500", "00001.500", "L", [("もしもし", "感動詞")]),
    ("0002", "00001.700", "00002.500", "R", [("はい", "感動詞")]),
    ("0003", "00002.600", "00003.000", "L", [("ええ", "感動詞")]),
    ("0004", "00003.100", "00003.600", "L", [("そう", "副詞")]),
]
_ONE_HAI: List[Unit] = [("0001", "00001.000", "00001.800", "L", [("はい", "感動詞")])]

_EVAL1 = ["A01M0097", "A01M0110", "A01M0137", "A03M0106", "A03M0112", "A03M0156",
          "A04M0051", "A04M0121", "A04M0123", "A05M0011"]
_EVAL2 = ["A01F0001", "A01F0034", "A01F0063", "A01M0056", "A01M0141", "A02M0012",
          "A03F0072", "A03M0016", "A06F0135", "A06M0064"]
_EVAL3 = ["S00F0019", "S00F0066", "S00F0148", "S00F0152", "S00M0008", "S00M0070",
          "S00M0079", "S00M0112", "S00M0213", "S01F0105"]

# talk -> (units, usb volume, dvd disc)
_TALKS: Dict[str, Tuple[List[Unit], str, str]] = {
    "A01F0055": (_A01F0055, "core", "dvd3"),
    "D01F0002": (_D01F0002, "core", "dvd3"),
    "S01F0003": (_S01F0003, "core", "dvd4"),
    "A02M0077": (_A02M0077, "noncore", "dvd4"),
    # same speaker as eval2's A01M0056: must appear nowhere
    "S05M0613": (_ONE_HAI, "noncore", "dvd5"),
    "D01M0019": (_ONE_HAI, "noncore", "dvd5"),
}
for _talk in _EVAL1 + _EVAL2 + _EVAL3:
    _TALKS[_talk] = (_ONE_HAI, "noncore", "dvd5")
_TALKS["A01M0110"] = (_ONE_HAI + [  # eval1 talk with a dropped × utterance
    ("0002", "00005.000", "00006.000", "L", [("(R ××)", "名詞")])], "noncore", "dvd5")
_TALKS["S00F0066"] = (_ONE_HAI + [  # eval3 talk whose two units merge
    ("0002", "00002.000", "00002.500", "L", [("(F あの)", "感動詞")])], "noncore", "dvd5")
_CRLF_TALKS = {"A02M0077"}  # SDB written with CRLF line ends

# Expected utterances: (utt id, recording = speaker, start, end, text), sorted by id.
_U1 = ("A01F0055_0001000_0003100", "A01F0055", "1.000", "3.100", "えーそれでこ今日は")
_U2 = ("A01F0055_0003700_0005600", "A01F0055", "3.700", "5.600", "ＡＳＲのＡＤ変換")
_U3 = ("A01F0055_0006500_0017000", "A01F0055", "6.500", "17.000", "うんへ変あの一点笑そう")
_U5 = ("A01F0055_0019500_0020000", "A01F0055", "19.500", "20.000", "二十年")
_U6 = ("A01F0055_0020900_0021500", "A01F0055", "20.900", "21.500", "はい")
_A02 = [("A02M0077_0001000_0001500", "A02M0077", "1.000", "1.500", "はい"),
        ("A02M0077_0003000_0003500", "A02M0077", "3.000", "3.500", "はい"),
        ("A02M0077_0005000_0005500", "A02M0077", "5.000", "5.500", "はい"),
        ("A02M0077_0007000_0007500", "A02M0077", "7.000", "7.500", "はい")]
_DL1 = ("D01F0002-L_0000500_0001500", "D01F0002-L", "0.500", "1.500", "もしもし")
_DL2 = ("D01F0002-L_0002600_0003600", "D01F0002-L", "2.600", "3.600", "ええそう")
_DR = ("D01F0002-R_0001700_0002500", "D01F0002-R", "1.700", "2.500", "はい")
_S = ("S01F0003_0000300_0001002", "S01F0003", "0.300", "1.002", "あのー皆さん")

# Duplicate removal, cap 2, Kaldi generator k = (k + 103349) % 71147, r = k / 71147:
#   r1..r6 = 0.4526 0.9052 0.3578 0.8104 0.2631 0.7157 (drawn only for texts seen >= 2x)
# subset A:   はい x5 (U6, A02 x4), keep if r < 2/5: U6 no, A02#1 no, #2 yes, #3 no, #4 yes
# subset all: はい x6 (+ D-R),      keep if r < 2/6: only A02#4; D-R (r6) no
_EXPECTED_UTTS = {
    "A": {
        "train_dev": [_U1, _U2, _U3],
        "train_nodev": [_U5, _U6] + _A02,
        "train_nodup": [_U5, _A02[1], _A02[3]],
    },
    "all": {
        "train_dev": [_U1, _U2, _U3],
        "train_nodev": [_U5, _U6] + _A02 + [_DL1, _DL2, _DR, _S],
        "train_nodup": [_U5, _A02[3], _DL1, _DL2, _S],
    },
}
_EVAL_UTTS = {
    "eval1": [(f"{t}_0001000_0001800", t, "1.000", "1.800", "はい") for t in _EVAL1],
    "eval2": [(f"{t}_0001000_0001800", t, "1.000", "1.800", "はい") for t in _EVAL2],
    "eval3": [(f"{t}_0001000_0001800", t, "1.000", "1.800", "はい") for t in _EVAL3
              if t != "S00F0066"],
}
_EVAL_UTTS["eval3"].insert(1, ("S00F0066_0001000_0002500", "S00F0066", "1.000", "2.500",
                               "はいあの"))


@dataclass(frozen=True)
class FakeCsjExpected:
    """Expected output of the CSJ preparation on a fake tree.

    ``dirs[subset][data_dir][file]`` is the exact content of wav.scp, segments, text,
    utt2spk and spk2utt for ``subset`` in ("A", "all") and data dirs train_dev,
    train_nodev, train_nodup, eval1, eval2 and eval3, with the arguments below.
    """

    train_dev_size: int
    dup_cap: int
    dirs: Dict[str, Dict[str, Dict[str, str]]]


def make_fake_csj(root: str | Path, version: str = "usb",
                  encoding: str = "shift_jis") -> FakeCsjExpected:
    """Write a small CSJ tree in the ``version`` layout ("usb", "dvd" or "merl").

    SDB files are encoded with ``encoding`` ("shift_jis" or "euc_jp"); audio is
    low-level noise, 16 kHz 16-bit mono (dialogues: ``-L``/``-R`` files), long enough
    for every segment.
    """
    root = Path(root)
    wav_paths: Dict[str, Path] = {}
    for talk, (units, usb_volume, disc) in _TALKS.items():
        sdb, audio_dir = _csj_paths(root, version, talk, usb_volume, disc)
        sdb.parent.mkdir(parents=True, exist_ok=True)
        newline = "\r\n" if talk in _CRLF_TALKS else "\n"
        sdb.write_bytes(newline.join(_sdb_lines(talk, units)).encode(encoding)
                        + newline.encode())
        seconds = float(units[-1][2]) + 0.5
        channels = ["-L", "-R"] if talk.startswith("D") else [""]
        for suffix in channels:
            wav_paths[talk + suffix] = audio_dir / f"{talk}{suffix}.wav"
            _write_noise(wav_paths[talk + suffix], seconds, seed=len(wav_paths))
    if version == "dvd":
        for disc in ("dvd3", "dvd4", "dvd5"):
            (root / disc / "00README.txt").write_text("fake disc\n")
    dirs = {}
    for subset, splits in _EXPECTED_UTTS.items():
        dirs[subset] = {name: _data_dir_files(utts, wav_paths)
                        for name, utts in {**splits, **_EVAL_UTTS}.items()}
    return FakeCsjExpected(train_dev_size=3, dup_cap=2, dirs=dirs)


def _csj_paths(root: Path, version: str, talk: str, usb_volume: str,
               disc: str) -> Tuple[Path, Path]:
    """(SDB path, audio folder) of ``talk`` in each layout of csj_format.md §1."""
    if version == "usb":
        return (root / "MORPH" / "SDB" / usb_volume / f"{talk}.sdb",
                root / "WAV" / usb_volume)
    if version == "dvd":
        return root / disc / talk / f"{talk}.sdb", root / disc / talk
    if version == "merl":  # audio is found recursively: use sub-folders
        return (root / "CSJ2004" / "sdb" / f"{talk}.sdb",
                root / "CSJ2004" / "WAV" / usb_volume)
    raise ValueError(f"unknown fake CSJ version {version!r}")


def _sdb_lines(talk: str, units: Sequence[Unit]) -> List[str]:
    """SDB lines with 17 tab-separated columns (unused columns hold placeholders)."""
    lines = []
    for unit_id, start, end, channel, words in units:
        for word in words:
            surface, pos = word[0], word[1]
            notag = word[2] if len(word) > 2 else surface
            time = f"{unit_id} {start}-{end} {channel}:-001-001"
            cols = [f"{len(lines) + 1:06d}", "c1", talk, time, "c4", surface, "c6", "c7",
                    "c8", notag, "カナ", pos, "", "", "", "", ""]
            lines.append("\t".join(cols))
    return lines


def _data_dir_files(utts: Sequence[Tuple[str, str, str, str, str]],
                    wav_paths: Dict[str, Path]) -> Dict[str, str]:
    spk2utt: Dict[str, List[str]] = {}
    for utt, rec, *_ in utts:
        spk2utt.setdefault(rec, []).append(utt)
    return {
        "wav.scp": "".join(f"{rec} {wav_paths[rec].resolve()}\n" for rec in sorted(spk2utt)),
        "segments": "".join(f"{u} {r} {s} {e}\n" for u, r, s, e, _ in utts),
        "text": "".join(f"{u} {t}\n" for u, _, _, _, t in utts),
        "utt2spk": "".join(f"{u} {r}\n" for u, r, *_ in utts),
        "spk2utt": "".join(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items())),
    }


def _write_noise(path: Path, seconds: float, seed: int, channels: int = 1) -> None:
    """16-bit low-level noise, wav or flac by suffix (not silence, so that feature
    normalisation in recipe tests stays finite)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (int(seconds * SAMPLE_RATE), channels) if channels > 1 \
        else (int(seconds * SAMPLE_RATE),)
    soundfile.write(str(path), rng.integers(-64, 64, shape, dtype=np.int16), SAMPLE_RATE,
                    subtype="PCM_16")


def write_stereo_dialogue(path: str | Path, seconds: float = 4.0) -> None:
    """A 2-channel 16 kHz wav, standing in for a dialogue stored as one file."""
    _write_noise(Path(path), seconds, seed=99, channels=2)


# ---------------------------------------------------------------------------------
# LibriSpeech
# ---------------------------------------------------------------------------------
LIBRI_SECONDS = 0.5  # length of every fake LibriSpeech utterance

# part -> (speaker-chapter folder, {utterance: transcript})
_LIBRI: Dict[str, List[Tuple[str, Dict[str, str]]]] = {
    "train-clean-100": [
        ("103-1240", {"103-1240-0000": "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED",
                      "103-1240-0001": "MISSUS RACHEL LYNDE LIVED JUST WHERE"}),
        ("19-198", {"19-198-0001": "NORTHANGER ABBEY"}),
    ],
    "dev-clean": [("1272-128104", {"1272-128104-0000": "MISTER QUILTER IS THE APOSTLE",
                                   "1272-128104-0001": "NOR IS MISTER QUILTER'S MANNER"})],
    "dev-other": [("116-288045", {"116-288045-0000": "AS I APPROACHED THE CITY"})],
    "test-clean": [("1089-134686", {"1089-134686-0000": "HE HOPED THERE WOULD BE STEW"})],
    "test-other": [("1688-142285", {"1688-142285-0000": "THERE'S IRON THEY SAY"})],
}

# Expected rows (part, utterance, text), hand-sorted in C order: "103-1240" < "19-198"
# because '0' < '9', and in dev "116-..." (dev-other) comes before "1272-..." (dev-clean).
_TRAIN_ROWS = [
    ("train-clean-100", "103-1240-0000", "CHAPTER ONE MISSUS RACHEL LYNDE IS SURPRISED"),
    ("train-clean-100", "103-1240-0001", "MISSUS RACHEL LYNDE LIVED JUST WHERE"),
    ("train-clean-100", "19-198-0001", "NORTHANGER ABBEY"),
]
_DEV_CLEAN_ROWS = [("dev-clean", "1272-128104-0000", "MISTER QUILTER IS THE APOSTLE"),
                   ("dev-clean", "1272-128104-0001", "NOR IS MISTER QUILTER'S MANNER")]
_DEV_OTHER_ROWS = [("dev-other", "116-288045-0000", "AS I APPROACHED THE CITY")]
_LIBRI_EXPECTED = {
    "train_clean_100": _TRAIN_ROWS,
    "dev_clean": _DEV_CLEAN_ROWS,
    "dev_other": _DEV_OTHER_ROWS,
    "test_clean": [("test-clean", "1089-134686-0000", "HE HOPED THERE WOULD BE STEW")],
    "test_other": [("test-other", "1688-142285-0000", "THERE'S IRON THEY SAY")],
    "dev": _DEV_OTHER_ROWS + _DEV_CLEAN_ROWS,
}


def make_fake_librispeech(root: str | Path) -> Dict[str, Dict[str, str]]:
    """Write ``root/LibriSpeech/<part>/<spk>/<chapter>/`` for the five 100 h parts.

    Audio is low-level noise, 16 kHz FLAC of :data:`LIBRI_SECONDS` each.

    Returns:
        ``{data_dir: {file: content}}`` for train_clean_100, dev_clean, dev_other,
        test_clean, test_other and dev (wav.scp, text, utt2spk, spk2utt).
    """
    root = Path(root)
    for part, chapters in _LIBRI.items():
        for speaker, utts in chapters:
            folder = root / "LibriSpeech" / part / speaker.replace("-", "/")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{speaker}.trans.txt").write_text(
                "".join(f"{u} {t}\n" for u, t in utts.items()))
            for n, utt in enumerate(utts):
                _write_noise(folder / f"{utt}.flac", LIBRI_SECONDS, seed=n)
    base = (root / "LibriSpeech").resolve()
    return {name: _libri_files(base, rows) for name, rows in _LIBRI_EXPECTED.items()}


def _libri_files(base: Path, rows: Sequence[Tuple[str, str, str]]) -> Dict[str, str]:
    speakers: Dict[str, List[str]] = {}
    for _, utt, _ in rows:
        speakers.setdefault(utt.rsplit("-", 1)[0], []).append(utt)
    return {
        "wav.scp": "".join(
            f"{u} {base / part / u.split('-')[0] / u.split('-')[1] / u}.flac\n"
            for part, u, _ in rows),
        "text": "".join(f"{u} {t}\n" for _, u, t in rows),
        "utt2spk": "".join(f"{u} {u.rsplit('-', 1)[0]}\n" for _, u, _ in rows),
        "spk2utt": "".join(f"{s} {' '.join(us)}\n" for s, us in speakers.items()),
    }
