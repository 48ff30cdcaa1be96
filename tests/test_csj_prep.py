"""CSJ preparation on fake corpus trees, against hand-written expected data dirs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from espnet2.fileio.sound_scp import SoundScpReader

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.corpora.csj import (
    connect_units,
    decode_sdb,
    prepare_csj,
    remove_duplicate_texts,
    sdb_words,
)
from dualmode_recipe.kaldi_dir import Utterance
from fake_corpora import make_fake_csj, write_stereo_dialogue

FILES = ("wav.scp", "segments", "text", "utt2spk", "spk2utt")


def _assert_dirs(out: Path, expected_dirs: dict) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(expected_dirs)
    for name, files in expected_dirs.items():
        for fname in FILES:
            assert (out / name / fname).read_text(encoding="utf-8") == files[fname], \
                f"{name}/{fname}"


@pytest.mark.parametrize("version,encoding", [
    ("usb", "shift_jis"), ("usb", "euc_jp"), ("dvd", "shift_jis"), ("merl", "euc_jp"),
])
@pytest.mark.parametrize("subset", ["A", "all"])
def test_prepare_matches_expected(tmp_path, version, encoding, subset):
    expected = make_fake_csj(tmp_path / "CSJ", version=version, encoding=encoding)
    out = tmp_path / "data"
    counts = prepare_csj(tmp_path / "CSJ", version, out, subset=subset,
                         train_dev_size=expected.train_dev_size, dup_cap=expected.dup_cap)
    _assert_dirs(out, expected.dirs[subset])
    assert counts["train_dev"] == 3 and counts["eval1"] == 10


def test_usb_literal_files(tmp_path):
    """The main outputs spelled out in full (subset all, usb, Shift_JIS)."""
    make_fake_csj(tmp_path / "CSJ")
    recipe_main(["prep_csj", "--csj_root", str(tmp_path / "CSJ"), "--csj_version", "usb",
                        "--out", str(tmp_path / "data"), "--subset", "all",
                        "--train_dev_size", "3", "--dup_cap", "2"])
    data, wav = tmp_path / "data", (tmp_path / "CSJ" / "WAV").resolve()
    assert (data / "train_dev" / "text").read_text() == (
        "A01F0055_0001000_0003100 えーそれでこ今日は\n"
        "A01F0055_0003700_0005600 ＡＳＲのＡＤ変換\n"
        "A01F0055_0006500_0017000 うんへ変あの一点笑そう\n")
    assert (data / "train_dev" / "segments").read_text() == (
        "A01F0055_0001000_0003100 A01F0055 1.000 3.100\n"
        "A01F0055_0003700_0005600 A01F0055 3.700 5.600\n"
        "A01F0055_0006500_0017000 A01F0055 6.500 17.000\n")
    assert (data / "train_nodev" / "text").read_text() == (
        "A01F0055_0019500_0020000 二十年\n"
        "A01F0055_0020900_0021500 はい\n"
        "A02M0077_0001000_0001500 はい\n"
        "A02M0077_0003000_0003500 はい\n"
        "A02M0077_0005000_0005500 はい\n"
        "A02M0077_0007000_0007500 はい\n"
        "D01F0002-L_0000500_0001500 もしもし\n"
        "D01F0002-L_0002600_0003600 ええそう\n"
        "D01F0002-R_0001700_0002500 はい\n"
        "S01F0003_0000300_0001002 あのー皆さん\n")
    assert (data / "train_nodup" / "text").read_text() == (
        "A01F0055_0019500_0020000 二十年\n"
        "A02M0077_0007000_0007500 はい\n"
        "D01F0002-L_0000500_0001500 もしもし\n"
        "D01F0002-L_0002600_0003600 ええそう\n"
        "S01F0003_0000300_0001002 あのー皆さん\n")
    assert (data / "train_nodup" / "segments").read_text() == (
        "A01F0055_0019500_0020000 A01F0055 19.500 20.000\n"
        "A02M0077_0007000_0007500 A02M0077 7.000 7.500\n"
        "D01F0002-L_0000500_0001500 D01F0002-L 0.500 1.500\n"
        "D01F0002-L_0002600_0003600 D01F0002-L 2.600 3.600\n"
        "S01F0003_0000300_0001002 S01F0003 0.300 1.002\n")
    assert (data / "train_nodup" / "utt2spk").read_text() == (
        "A01F0055_0019500_0020000 A01F0055\n"
        "A02M0077_0007000_0007500 A02M0077\n"
        "D01F0002-L_0000500_0001500 D01F0002-L\n"
        "D01F0002-L_0002600_0003600 D01F0002-L\n"
        "S01F0003_0000300_0001002 S01F0003\n")
    assert (data / "train_nodup" / "wav.scp").read_text() == (
        f"A01F0055 {wav}/core/A01F0055.wav\n"
        f"A02M0077 {wav}/noncore/A02M0077.wav\n"
        f"D01F0002-L {wav}/core/D01F0002-L.wav\n"
        f"S01F0003 {wav}/core/S01F0003.wav\n")
    assert (data / "eval3" / "text").read_text() == (
        "S00F0019_0001000_0001800 はい\n"
        "S00F0066_0001000_0002500 はいあの\n"
        "S00F0148_0001000_0001800 はい\n"
        "S00F0152_0001000_0001800 はい\n"
        "S00M0008_0001000_0001800 はい\n"
        "S00M0070_0001000_0001800 はい\n"
        "S00M0079_0001000_0001800 はい\n"
        "S00M0112_0001000_0001800 はい\n"
        "S00M0213_0001000_0001800 はい\n"
        "S01F0105_0001000_0001800 はい\n")
    # The entries are read by ESPnet's own wav.scp reader, long enough for the segments.
    reader = SoundScpReader(str(data / "train_nodev" / "wav.scp"))
    rate, samples = reader["D01F0002-R"]
    assert rate == 16000 and len(samples) >= 2.5 * rate


def test_stereo_dialogue_file_becomes_two_sox_pipes(tmp_path):
    make_fake_csj(tmp_path / "CSJ")
    wav = (tmp_path / "CSJ" / "WAV" / "core").resolve()
    (wav / "D01F0002-L.wav").unlink()
    (wav / "D01F0002-R.wav").unlink()
    write_stereo_dialogue(wav / "D01F0002.wav")
    prepare_csj(tmp_path / "CSJ", "usb", tmp_path / "data", "all", 3, 2)
    lines = (tmp_path / "data" / "train_nodev" / "wav.scp").read_text().splitlines()
    assert lines[2:4] == [f"D01F0002-L sox {wav}/D01F0002.wav -t wav - remix 1 |",
                          f"D01F0002-R sox {wav}/D01F0002.wav -t wav - remix 2 |"]


def test_mono_dialogue_file_is_an_error(tmp_path):
    make_fake_csj(tmp_path / "CSJ")
    wav = tmp_path / "CSJ" / "WAV" / "core"
    (wav / "D01F0002-R.wav").unlink()
    shutil.move(wav / "D01F0002-L.wav", wav / "D01F0002.wav")
    with pytest.raises(FileNotFoundError,
                       match=r"D01F0002: no audio for D01F0002-L: expected D01F0002-L\.wav "
                             r"\(or a 2-channel D01F0002\.wav\) under .*WAV"):
        prepare_csj(tmp_path / "CSJ", "usb", tmp_path / "data", "all", 3, 2)


def test_missing_audio_names_the_file_unless_talk_unused(tmp_path):
    make_fake_csj(tmp_path / "CSJ")
    (tmp_path / "CSJ" / "WAV" / "core" / "S01F0003.wav").unlink()
    # subset A does not use the S talk
    prepare_csj(tmp_path / "CSJ", "usb", tmp_path / "a", "A", 3, 2)
    with pytest.raises(FileNotFoundError, match=r"expected S01F0003\.wav under /.*/WAV"):
        prepare_csj(tmp_path / "CSJ", "usb", tmp_path / "all", "all", 3, 2)


def test_wrong_root_names_expected_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as err:
        recipe_main(["prep_csj", "--csj_root", str(tmp_path / "empty"), "--csj_version", "usb",
                            "--out", str(tmp_path / "data"), "--subset", "A"])
    message = str(err.value.code)
    assert f"{tmp_path}/empty/MORPH/SDB/{{core,noncore}}/<talk>.sdb" in message
    assert f"{tmp_path}/empty/WAV/" in message


def test_wrong_version_suggests_the_layout_found(tmp_path):
    make_fake_csj(tmp_path / "CSJ", version="usb")
    with pytest.raises(FileNotFoundError) as err:
        prepare_csj(tmp_path / "CSJ", "dvd", tmp_path / "data")
    assert f"{tmp_path}/CSJ/dvd3 ... {tmp_path}/CSJ/dvd17" in str(err.value)
    assert "looks like the usb layout" in str(err.value)


def test_missing_eval_talk_is_an_error(tmp_path):
    make_fake_csj(tmp_path / "CSJ", version="merl")
    (tmp_path / "CSJ" / "CSJ2004" / "sdb" / "S00M0213.sdb").unlink()
    with pytest.raises(FileNotFoundError, match="evaluation talks missing .*: S00M0213;"):
        prepare_csj(tmp_path / "CSJ", "merl", tmp_path / "data")


def test_too_few_training_utterances(tmp_path):
    make_fake_csj(tmp_path / "CSJ")
    with pytest.raises(ValueError, match="only 9 training utterances"):
        prepare_csj(tmp_path / "CSJ", "usb", tmp_path / "data", "A", train_dev_size=9)


def test_undecodable_sdb_names_the_file(tmp_path):
    make_fake_csj(tmp_path / "CSJ")
    bad = tmp_path / "CSJ" / "MORPH" / "SDB" / "core" / "A01F0055.sdb"
    bad.write_bytes(b"0001\t\xff\xfe\xfd\n")
    with pytest.raises(ValueError, match=f"{bad}: SDB file is neither Shift_JIS nor EUC-JP"):
        prepare_csj(tmp_path / "CSJ", "usb", tmp_path / "data")


def test_malformed_time_field_names_file_and_line(tmp_path):
    sdb = "\n".join([
        "\t".join(["1", "", "X", "0001 00001.000-00002.000 L:-001-001", "", "はい", "", "",
                   "", "はい", "ハイ", "感動詞"]),
        "\t".join(["2", "", "X", "0002 1.0 to 2.0", "", "ええ", "", "", "", "ええ", "エー",
                   "感動詞"]),
    ])
    with pytest.raises(ValueError,
                       match=r"talk\.sdb:2: time field \(column 3, 0-based\) should read"):
        sdb_words(sdb, "talk.sdb")


def test_decode_prefers_euc_jp_when_both_decode(tmp_path):
    # Hiragana in EUC-JP are byte pairs 0xA4xx, which are also valid (half-width kana)
    # Shift_JIS: the decoder must still pick EUC-JP.
    path = tmp_path / "a.sdb"
    path.write_bytes("1\tはい\tそうです\r\n".encode("euc_jp"))
    path.read_bytes().decode("shift_jis")  # really ambiguous
    assert decode_sdb(path) == "1\tはい\tそうです\n"


def test_decode_widens_halfwidth_katakana(tmp_path):
    path = tmp_path / "a.sdb"
    path.write_bytes("1\tｶﾞｲﾄﾞ･ﾌﾞｯｸ\tガイド\n".encode("shift_jis"))
    assert decode_sdb(path) == "1\tガイド・ブック\tガイド\n"


def _line(unit: str, word: str, notag: str, pos: str = "名詞") -> str:
    return "\t".join(["1", "", "T", f"{unit} 00001.000-00002.000 L:-001-001", "", word, "",
                      "", "", notag, "", pos])


@pytest.mark.parametrize("lines,surfaces", [
    # numeral tag over two words (the first holds a numeral character): column 9 of
    # both; its end clears the numeral state, so the next alphabet tag gives "Ａ"
    ([("(A 二十", "二十"), ("五;２５)", "五"), ("(A エー;Ａ)", "エー")], ["二十", "五", "Ａ"]),
    # ... but Kaldi only looks for numeral characters in the word that holds "A", so
    # this one is taken as an alphabet tag; ３ is not one of Kaldi's characters either
    ([("(A ニジュウ", "二十"), ("ゴ;２５)", "五")], ["２５"]),
    ([("(A サン;３)", "三")], ["３"]),
    # Kaldi keeps the numeral state after a one-word numeral tag, so the next A-tag
    # word takes column 9 too ("ＤＶＤ" is not used)
    ([("(A サンジュウ;３０)", "三十"), ("本", "本"), ("(A ディーブイディー;ＤＶＤ)", "ＤＶＤ版")],
     ["三十", "本", "ＤＶＤ版"]),
    # ゼ alone marks a numeral (Kaldi tests characters one by one): column 9
    ([("(A ゼット;Ｚ)", "ゼット")], ["ゼット"]),
    # alphabet tag over three words: only the part after ';' of the last one
    ([("(A エー", "x"), ("ビー", "y"), ("シー;ＡＢＣ)", "z"), ("社", "社")], ["ＡＢＣ", "社"]),
    # (? a,b) keeps both candidates; (W x;y) both sides; tags inside tags
    ([("(? あ,い)", ""), ("(W ター;タ)", ""), ("(F (D え)えっと)", "")],
     ["あい", "タータ", "ええっと"]),
])
def test_word_rules(lines, surfaces):
    text = "\n".join(_line("0001", word, notag) for word, notag in lines)
    assert [w.surface for w in sdb_words(text)] == surfaces


def test_connect_splits_long_utterances_and_channels():
    words = sdb_words("\n".join([
        "\t".join(["1", "", "D", f"{u} {s}-{e} {ch}:-001-001", "", w, "", "", "", w, "",
                   "名詞"])
        for u, s, e, ch, w in [("0001", "00000.000", "00004.000", "L", "あ"),
                               ("0002", "00004.500", "00009.000", "L", "い"),
                               ("0003", "00009.400", "00011.000", "L", "う"),  # 9 s so far
                               ("0004", "00011.200", "00012.000", "L", "え"),  # 11 s > 10
                               ("0005", "00012.100", "00012.900", "R", "お")]]))
    utts, dropped = connect_units(words, "D01F0002")
    assert [(u.utt_id, u.text, u.recording) for u in utts] == [
        ("D01F0002-L_0000000_0011000", "あいう", "D01F0002-L"),
        ("D01F0002-L_0011200_0012000", "え", "D01F0002-L"),
        ("D01F0002-R_0012100_0012900", "お", "D01F0002-R"),
    ]
    assert not dropped


def test_remove_duplicate_texts_uses_kaldi_generator():
    # x: count 4, kept if r < 2/4; y: count 2 = cap, so it draws too (kept if r < 1).
    # Draws in order: u0 .4526 keep, u1 .9052 keep, u2 .3578 keep, u3 .8104 drop,
    # u4 .2631 keep, u5 .7157 drop; z (count 1) draws nothing.
    utts = [Utterance(f"u{i}", "s", t, "r", 0.0, 1.0)
            for i, t in enumerate(["x", "y", "x", "x", "y", "x", "z"])]
    kept = remove_duplicate_texts(utts, cap=2)
    assert [u.utt_id for u in kept] == ["u0", "u1", "u2", "u4", "u6"]
