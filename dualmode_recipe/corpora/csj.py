"""Corpus of Spontaneous Japanese (CSJ) -> Kaldi data directories, in pure Python.

Produces the same utterances and texts as ESPnet's ``egs2/csj/asr1`` stage 0-1
(Kaldi ``csj2kaldi4m.pl`` + ``csjconnect.pl 0.5 10`` + ``csj_data_prep.sh`` +
``csj_rm_tag_sp_space.sh`` + ``subset_data_dir.sh`` + ``remove_dup_utts.sh 300``), with
three deliberate differences, all documented in :func:`prepare_csj`:

* dialogue talks (``D...``) are kept, one recording per channel (ESPnet loses them
  because its wav.scp key has no ``-L``/``-R`` suffix);
* the talks recorded by the eval2 speaker A01M0056 (:data:`EXCLUDED_TALKS`) are left
  out of training (ESPnet's ``*/*/*-wav.list`` glob lets them back in);
* the training talks can be restricted to academic lectures (``subset="A"``).

The rules were read from Kaldi ``egs/csj/s5/local/csj_make_trans/`` (``csj2kaldi4m.pl``,
``csjconnect.pl``, ``csj_autorun.sh``), ``local/csj_data_prep.sh`` and ESPnet
``egs2/csj/asr1/local/data.sh``; this module re-implements them.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import soundfile

from dualmode_recipe.kaldi_dir import Utterance, write_data_dir

logger = logging.getLogger(__name__)

CSJ_VERSIONS = ("usb", "dvd", "merl")
SUBSETS = ("A", "all")

#: Official evaluation talks (Kaldi ``csj_autorun.sh``); each set must be complete.
EVAL_SETS: Dict[str, Tuple[str, ...]] = {
    "eval1": ("A01M0110", "A01M0137", "A01M0097", "A04M0123", "A04M0121",
              "A04M0051", "A03M0156", "A03M0112", "A03M0106", "A05M0011"),
    "eval2": ("A01M0056", "A03F0072", "A02M0012", "A03M0016", "A06M0064",
              "A06F0135", "A01F0034", "A01F0063", "A01F0001", "A01M0141"),
    "eval3": ("S00M0112", "S00F0066", "S00M0213", "S00F0019", "S00M0079",
              "S01F0105", "S00F0152", "S00M0070", "S00M0008", "S00F0148"),
}
#: Talks by the eval2 speaker A01M0056, never used for training.
EXCLUDED_TALKS: Tuple[str, ...] = ("S05M0613", "R00M0187", "D01M0019", "D04M0056",
                                   "D02M0028", "D03M0017")

#: SDB encodings (lhotse reads SDB as Shift_JIS, Kaldi's first version as EUC-JP).
SDB_ENCODINGS = ("shift_jis", "euc_jp")

# csjconnect.pl defaults: merge units unless the pause exceeds GAP or the utterance
# already exceeds MAX_LEN seconds.
MERGE_GAP = 0.5
MERGE_MAX_LEN = 10.0

# Characters whose presence makes csj2kaldi4m.pl treat an A-tag as a numeral. Kaldi
# tests them one by one (a Perl character class), so ゼ, ロ and ',' count on their own.
_NUMERAL_CHARS = frozenset("ゼロ,０零一二三四五六七八九十百千．")
_DELETE_ASCII = dict.fromkeys(range(0x80))
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TIME_FIELD = re.compile(r"(\d+) ([\d.]+)-([\d.]+) (.):-\d+-\d+")
_FULLWIDTH_JAPANESE = re.compile("[\u3040-\u30ff\u4e00-\u9fff\uff01-\uff5e]")
_HALFWIDTH_KANA = re.compile("[\uff61-\uff9f]+")
_REDACTED = "×"  # U+00D7: a unit with redacted words drops its whole utterance


@dataclass(frozen=True)
class CsjTalk:
    """Where one talk's files live: its SDB and the folder searched for its audio."""

    talk_id: str
    sdb: Path
    audio_dir: Path


@dataclass(frozen=True)
class SdbWord:
    """One kept SDB word line: its unit (IPU) and the word's surface form.

    ``start``/``end`` are the unit's times as written in the SDB (seconds, strings,
    so that utterance ids are made from the original digits as Kaldi does).
    """

    unit_id: str
    start: str
    end: str
    channel: str
    surface: str


def layout_description(csj_root: str | os.PathLike, version: str) -> str:
    """Where ``version`` keeps SDB transcripts and audio under ``csj_root`` (for errors)."""
    root = Path(csj_root)
    if version == "usb":
        return (f"{root}/MORPH/SDB/{{core,noncore}}/<talk>.sdb with audio under {root}/WAV/ "
                "(<talk>.wav; dialogues <talk>-L.wav and <talk>-R.wav)")
    if version == "dvd":
        return (f"{root}/dvd3 ... {root}/dvd17, each holding <talk>/<talk>.sdb with the "
                "talk's audio in the same <talk>/ folder")
    if version == "merl":
        return f"{root}/CSJ2004/sdb/<talk>.sdb with audio under {root}/CSJ2004/WAV/"
    raise ValueError(f"unknown CSJ version {version!r}; choose one of {CSJ_VERSIONS}")


def find_talks(csj_root: str | os.PathLike, version: str) -> Dict[str, CsjTalk]:
    """List every talk with an SDB transcript in a CSJ copy laid out as ``version``.

    Raises:
        FileNotFoundError: no SDB where ``version`` keeps them; the message says where
            they were expected and which other layout the folder looks like, if any.
        ValueError: unknown version, or one talk id found twice.
    """
    root = Path(csj_root).resolve()
    expected = layout_description(root, version)
    talks: Dict[str, CsjTalk] = {}
    for talk in _scan_layout(root, version):
        if talk.talk_id in talks:
            raise ValueError(f"talk {talk.talk_id} has two SDB files: "
                             f"{talks[talk.talk_id].sdb} and {talk.sdb}")
        talks[talk.talk_id] = talk
    if not talks:
        others = [v for v in CSJ_VERSIONS if v != version and any(_scan_layout(root, v))]
        hint = f" The folder looks like the {'/'.join(others)} layout." if others else ""
        raise FileNotFoundError(f"no CSJ transcripts found for --csj_version {version}: "
                                f"expected {expected}.{hint}")
    return talks


def _scan_layout(root: Path, version: str) -> Iterable[CsjTalk]:
    if version == "usb":
        for volume in ("core", "noncore"):
            for sdb in sorted((root / "MORPH" / "SDB" / volume).glob("*.sdb")):
                yield CsjTalk(sdb.stem, sdb, root / "WAV")
    elif version == "dvd":
        for number in range(3, 18):
            disc = root / f"dvd{number}"
            if not disc.is_dir():
                continue
            for talk_dir in sorted(p for p in disc.iterdir() if p.is_dir()):
                sdb = talk_dir / f"{talk_dir.name}.sdb"
                if sdb.is_file():
                    yield CsjTalk(talk_dir.name, sdb, talk_dir)
                else:
                    logger.warning("skipping %s: no %s in it", talk_dir, sdb.name)
    elif version == "merl":
        for sdb in sorted((root / "CSJ2004" / "sdb").glob("*.sdb")):
            yield CsjTalk(sdb.stem, sdb, root / "CSJ2004" / "WAV")
    else:
        raise ValueError(f"unknown CSJ version {version!r}; choose one of {CSJ_VERSIONS}")


def decode_sdb(path: str | os.PathLike) -> str:
    """Read an SDB file whose encoding (Shift_JIS or EUC-JP) is not declared.

    Each encoding in :data:`SDB_ENCODINGS` that decodes the bytes strictly gives a
    candidate. EUC-JP bytes often also decode as Shift_JIS, but into half-width kana,
    so when both do, the candidate with more full-width Japanese characters wins (a tie
    goes to Shift_JIS). Like Kaldi's ``nkf -w8 -d``, half-width katakana become
    full-width (NFKC on those runs only) and CR before LF is removed.

    Raises:
        ValueError: the file decodes in neither encoding (the message names it).
    """
    data = Path(path).read_bytes()
    candidates: List[str] = []
    for encoding in SDB_ENCODINGS:
        try:
            candidates.append(data.decode(encoding))
        except UnicodeDecodeError:
            continue
    if not candidates:
        raise ValueError(f"{path}: SDB file is neither Shift_JIS nor EUC-JP")
    text = max(candidates, key=lambda t: len(_FULLWIDTH_JAPANESE.findall(t)))
    text = _HALFWIDTH_KANA.sub(lambda m: unicodedata.normalize("NFKC", m.group()), text)
    return text.replace("\r\n", "\n")


class _ATagState:
    """csj2kaldi4m.pl's state across lines for A-tags that span several words.

    ``pending`` counts the lines of an A-tag still waiting for its ``;`` line, and
    ``numeral`` marks a numeral A-tag. As in Kaldi, ``numeral`` is cleared only when a
    multi-line numeral tag ends: after a one-line numeral tag every later A-tag word of
    the talk also takes column 9.
    """

    def __init__(self) -> None:
        self.pending = 0
        self.numeral = False

    def surface(self, word: str, notag: str) -> Optional[str]:
        """Surface of one column-5 ``word`` (``None``: the word is held back)."""
        if "A" not in word and not self.pending:
            return word.translate(_DELETE_ASCII)
        if ("A" in word and not _NUMERAL_CHARS.isdisjoint(word)) or self.numeral:
            # Numeral: every line of the tag contributes its column 9 (kanji numeral).
            self.numeral = True
            if ";" not in word:
                self.pending += 1
            elif self.pending:
                self.pending = 0
                self.numeral = False
            return notag
        if ";" in word:
            # Alphabet form: the part after ';' of the tag's last line; earlier lines
            # of the same tag (the katakana reading) are dropped.
            self.pending = 0
            parts = word.split(";")
            return parts[1].translate(_DELETE_ASCII)
        self.pending += 1
        return None


def _normalize_word(word: str) -> str:
    """Kaldi's fixes: one trailing '・' dropped; んー→ん and ンー→ン, applied twice."""
    if word.endswith("・"):
        word = word[:-1]
    for _ in range(2):
        word = word.replace("んー", "ん").replace("ンー", "ン")
    return word


def sdb_words(text: str, source: str | os.PathLike = "<sdb>") -> List[SdbWord]:
    """Kept words of one decoded SDB file, in file order (Kaldi ``csj2kaldi4m.pl``).

    Columns are 0-based. Column 5 (the word with tags) loses every ASCII character, which strips the tag
    letters and brackets but keeps their content (fillers, fragments, both sides of K
    tags). A-tags are the exception: numerals take column 9 and alphabet tags the part
    after ``;``. A line is kept only when its surface and its POS (column 11) are
    non-empty.

    Raises:
        ValueError: a kept line whose time field (column 3) is malformed; the message
            gives ``source`` and the line number.
    """
    state = _ATagState()
    words: List[SdbWord] = []
    for lineno, line in enumerate(text.split("\n"), 1):
        cols = line.split("\t")
        word = cols[5] if len(cols) > 5 else ""
        notag = cols[9] if len(cols) > 9 else ""
        pos = cols[11] if len(cols) > 11 else ""
        surface = state.surface(word, notag)
        if surface is None:
            continue
        surface = _normalize_word(surface)
        if not surface or not pos:
            continue
        match = _TIME_FIELD.search(cols[3])
        if match is None:
            raise ValueError(f"{source}:{lineno}: time field (column 3, 0-based) should "
                             f"read '<unit> <start>-<end> <channel>:-NNN-NNN', got "
                             f"{cols[3]!r}")
        unit_id, start, end, channel = match.groups()
        words.append(SdbWord(unit_id, start, end, channel, surface))
    return words


def connect_units(
    words: Sequence[SdbWord],
    talk_id: str,
    gap: float = MERGE_GAP,
    max_len: float = MERGE_MAX_LEN,
) -> Tuple[List[Utterance], Counter]:
    """Merge consecutive SDB units into utterances (Kaldi ``csjconnect.pl``).

    A new unit starts a new utterance when its pause after the previous unit exceeds
    ``gap``, when the utterance so far already exceeds ``max_len`` seconds, or when the
    speaker changes (a dialogue's channels are separate speakers ``<talk>-L``/``-R``).
    The utterance id is ``<speaker>_<start ms>_<end ms>`` with milliseconds truncated
    as ``int(1000 * seconds)`` (Kaldi's awk), the recording and speaker are the
    speaker, and the text is the words' surfaces joined with all whitespace removed
    and ASCII letters lower-cased (ESPnet's ``csj_rm_tag_sp_space.sh``).

    Returns:
        The utterances and a counter of dropped ones: ``"redacted"`` (a word with
        ``×``) and ``"empty"`` (zero length after truncation to milliseconds).

    Raises:
        ValueError: a dialogue word on a channel other than L or R.
    """
    dialogue = talk_id.startswith("D")
    groups: List[List[SdbWord]] = []
    prev: Optional[SdbWord] = None
    for word in words:
        if dialogue and word.channel not in ("L", "R"):
            raise ValueError(f"{talk_id}: unit {word.unit_id} is on channel "
                             f"{word.channel!r}; dialogue channels are L and R")
        if prev is None or _speaker(talk_id, word) != _speaker(talk_id, groups[-1][0]):
            groups.append([word])
        elif word.unit_id == prev.unit_id:
            groups[-1].append(word)
        elif (float(word.start) - float(prev.end) > gap
              or float(prev.end) - float(groups[-1][0].start) > max_len):
            groups.append([word])
        else:
            groups[-1].append(word)
        prev = word

    dropped: Counter = Counter()
    utterances: List[Utterance] = []
    for group in groups:
        text = "".join(w.surface for w in group)
        if _REDACTED in text:
            dropped["redacted"] += 1
            continue
        start_ms = int(1000 * float(group[0].start))
        end_ms = int(1000 * float(group[-1].end))
        if end_ms <= start_ms:
            dropped["empty"] += 1
            continue
        speaker = _speaker(talk_id, group[0])
        utterances.append(Utterance(
            utt_id=f"{speaker}_{start_ms:07d}_{end_ms:07d}",
            speaker=speaker,
            text="".join(text.translate(_ASCII_LOWER).split()),
            recording=speaker,
            start=start_ms / 1000,
            end=end_ms / 1000,
        ))
    return utterances, dropped


def _speaker(talk_id: str, word: SdbWord) -> str:
    return f"{talk_id}-{word.channel}" if talk_id.startswith("D") else talk_id


def read_talk(talk: CsjTalk) -> Tuple[List[Utterance], Counter]:
    """Utterances of one talk and the counts of dropped ones (see connect_units)."""
    words = sdb_words(decode_sdb(talk.sdb), talk.sdb)
    return connect_units(words, talk.talk_id)


class _AudioFinder:
    """Finds a talk's wav files by name (case-insensitive) below its audio folder.

    Each folder is walked once; Kaldi likewise locates the audio with ``find -iname``.
    """

    def __init__(self) -> None:
        self._index: Dict[Path, Dict[str, List[Path]]] = {}

    def find(self, directory: Path, filename: str) -> Optional[Path]:
        """The one file called ``filename`` below ``directory``, or None."""
        if directory not in self._index:
            index: Dict[str, List[Path]] = {}
            for dirpath, _, files in os.walk(directory):
                for name in files:
                    index.setdefault(name.lower(), []).append(Path(dirpath) / name)
            self._index[directory] = index
        matches = self._index[directory].get(filename.lower(), [])
        if len(matches) > 1:
            raise ValueError(f"{filename} is ambiguous: {', '.join(map(str, matches))}")
        return matches[0] if matches else None

    def recordings(self, talk: CsjTalk, recording_ids: Iterable[str]) -> Dict[str, str]:
        """wav.scp entries of the given recordings of ``talk``.

        A dialogue channel ``<talk>-L``/``-R`` is its file ``<talk>-L.wav``/``-R.wav``;
        failing that, a 2-channel ``<talk>.wav`` is split with ``sox ... remix N |``, a
        pipe that ESPnet's format_wav_scp.py reads (sox is then needed at that stage).

        Raises:
            FileNotFoundError: audio missing; the message names the expected files.
        """
        entries: Dict[str, str] = {}
        for rec in sorted(set(recording_ids)):
            path = self.find(talk.audio_dir, f"{rec}.wav")
            if path is not None:
                entries[rec] = str(path)
                continue
            expected = f"{rec}.wav"
            if rec != talk.talk_id:  # a dialogue channel
                whole = self.find(talk.audio_dir, f"{talk.talk_id}.wav")
                if whole is not None and soundfile.info(str(whole)).channels == 2:
                    channel = 1 if rec.endswith("-L") else 2
                    entries[rec] = f"sox {shlex.quote(str(whole))} -t wav - remix {channel} |"
                    continue
                expected += f" (or a 2-channel {talk.talk_id}.wav)"
            raise FileNotFoundError(f"talk {talk.talk_id}: no audio for {rec}: expected "
                                    f"{expected} under {talk.audio_dir}")
        return entries


def remove_duplicate_texts(utterances: Sequence[Utterance], cap: int) -> List[Utterance]:
    """Thin out over-represented texts (Kaldi ``utils/data/remove_dup_utts.sh``).

    An utterance whose text occurs fewer than ``cap`` times is kept; otherwise it is
    kept with probability ``cap / count`` drawn from Kaldi's deterministic generator
    (``k = (k + 103349) % 71147``, called only for such utterances, in input order).
    About ``cap`` copies of each frequent text survive, not exactly ``cap``.
    """
    if cap < 1:
        raise ValueError(f"duplicate cap must be positive, got {cap}")
    counts = Counter(u.text for u in utterances)
    state = 0
    kept: List[Utterance] = []
    for utt in utterances:
        count = counts[utt.text]
        if count < cap:
            kept.append(utt)
            continue
        state = (state + 103349) % 71147
        if state / 71147 < cap / count:
            kept.append(utt)
    return kept


def prepare_csj(
    csj_root: str | os.PathLike,
    version: str,
    out_dir: str | os.PathLike,
    subset: str = "all",
    train_dev_size: int = 4000,
    dup_cap: int = 300,
) -> Dict[str, int]:
    """Write train_nodup, train_nodev, train_dev, eval1, eval2 and eval3 under ``out_dir``.

    ``train`` is every talk that is in no eval set and not in :data:`EXCLUDED_TALKS`
    (``subset="A"``: academic lectures only, talk ids starting with ``A``), dialogues
    included with one recording and speaker per channel. Its utterances sorted by id
    give ``train_dev`` (the first ``train_dev_size``) and ``train_nodev`` (the rest);
    ``train_nodup`` is ``train_nodev`` after :func:`remove_duplicate_texts` (ESPnet
    trains its LM on ``train_nodev/text``). Every eval set must be complete, as ESPnet
    checks too. wav.scp entries are absolute wav paths (ESPnet's format stage reads
    them with soundfile); ESPnet differs in keeping the excluded talks in training and
    losing the dialogues (see the module docstring).

    Returns:
        Number of utterances per written data directory.

    Raises:
        FileNotFoundError: a wrong root/version, an eval talk or a talk's audio missing.
        ValueError: bad arguments, an undecodable or malformed SDB, or fewer training
            utterances than ``train_dev_size + 1``.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {SUBSETS}")
    if train_dev_size < 1:
        raise ValueError(f"train_dev_size must be positive, got {train_dev_size}")
    talks = find_talks(csj_root, version)
    logger.info("found %d talks (%s layout) under %s", len(talks), version, csj_root)
    missing = [t for ids in EVAL_SETS.values() for t in ids if t not in talks]
    if missing:
        raise FileNotFoundError(f"evaluation talks missing from {csj_root}: "
                                f"{' '.join(missing)}; expected "
                                f"{layout_description(csj_root, version)}")
    held_out = {t for ids in EVAL_SETS.values() for t in ids} | set(EXCLUDED_TALKS)
    train_talks = [t for t in sorted(talks)
                   if t not in held_out and (subset == "all" or t.startswith("A"))]

    finder = _AudioFinder()
    data: Dict[str, Tuple[List[Utterance], Dict[str, str]]] = {
        name: _collect(name, talks, ids, finder) for name, ids in EVAL_SETS.items()}
    utts, wav_scp = _collect("train", talks, train_talks, finder)
    utts.sort(key=lambda u: u.utt_id)
    if len(utts) <= train_dev_size:
        raise ValueError(f"only {len(utts)} training utterances, not more than "
                         f"train_dev_size={train_dev_size}")
    nodev = utts[train_dev_size:]
    data["train_dev"] = (utts[:train_dev_size], wav_scp)
    data["train_nodev"] = (nodev, wav_scp)
    data["train_nodup"] = (remove_duplicate_texts(nodev, dup_cap), wav_scp)

    counts: Dict[str, int] = {}
    for name, (split, split_wav_scp) in data.items():
        write_data_dir(Path(out_dir) / name, split, split_wav_scp)
        counts[name] = len(split)
        logger.info("%s: %d utterances", Path(out_dir) / name, len(split))
    return counts


def _collect(
    name: str, talks: Dict[str, CsjTalk], talk_ids: Iterable[str], finder: _AudioFinder
) -> Tuple[List[Utterance], Dict[str, str]]:
    """Utterances and wav.scp entries of the talks of set ``name``."""
    utterances: List[Utterance] = []
    wav_scp: Dict[str, str] = {}
    dropped: Counter = Counter()
    for talk_id in talk_ids:
        talk = talks[talk_id]
        talk_utts, talk_dropped = read_talk(talk)
        dropped.update(talk_dropped)
        wav_scp.update(finder.recordings(talk, (u.recording for u in talk_utts)))
        utterances.extend(talk_utts)
    if dropped:
        logger.info("%s: dropped %d utterances with redacted words (×) and %d of zero "
                    "length", name, dropped["redacted"], dropped["empty"])
    return utterances, wav_scp
