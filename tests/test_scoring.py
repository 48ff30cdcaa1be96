"""Tests of dualmode_recipe.scoring and the score command.

References used:
- NIST sclite (run when installed; CI installs sctk): per-utterance and total counts of
  the Python scorer must equal sclite's exactly, and the printed percentages must equal
  sclite's ``Sum/Avg`` row.
- ESPnet's own ``espnet2.bin.tokenize_text`` plus asr.sh's ``paste`` with utt2spk: the
  ``.trn`` files must be byte-identical to what stage 13 writes.
- A slow memoised recursion (written here) for the minimum of sclite's cost
  4*S + 3*(D+I) and for the plain Levenshtein distance, valid without sclite.
- Hand-worked alignments (DP by hand with sclite's rules; also confirmed with sclite 2.10).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

from dualmode_recipe.__main__ import main as recipe_main
from dualmode_recipe.scoring import (
    AlignCounts, align, count_errors, find_sclite, sclite_percent, sclite_words, score,
    tokenize,
)
from dualmode_recipe.scoring import sclite as sclite_mod

SCLITE = find_sclite()
needs_sclite = pytest.mark.skipif(SCLITE is None, reason="sclite (SCTK) is not installed")


# ----------------------------------------------------------------------------- helpers

def _slow_costs(ref: Sequence[str], hyp: Sequence[str], sub: int, indel: int) -> int:
    """Minimum edit cost by plain memoised recursion (no tie-breaking involved)."""
    @functools.lru_cache(maxsize=None)
    def d(i: int, j: int) -> int:
        if i == 0:
            return j * indel
        if j == 0:
            return i * indel
        return min(d(i - 1, j - 1) + (0 if ref[i - 1] == hyp[j - 1] else sub),
                   d(i - 1, j) + indel, d(i, j - 1) + indel)
    return d(len(ref), len(hyp))


def _random_pairs(seed: int, n: int, alphabet: Sequence[str], max_len: int
                  ) -> List[Tuple[List[str], List[str]]]:
    rng = random.Random(seed)
    return [([rng.choice(alphabet) for _ in range(rng.randint(0, max_len))],
             [rng.choice(alphabet) for _ in range(rng.randint(0, max_len))])
            for _ in range(n)]


def _both_backends(ref: Dict[str, str], hyp: Dict[str, str], unit: str, tmp_path: Path,
                   **kw):
    py = score(ref, hyp, unit, backend="python", output_dir=tmp_path / f"py_{unit}", **kw)
    sc = score(ref, hyp, unit, backend="sclite", output_dir=tmp_path / f"sc_{unit}", **kw)
    return py, sc


def _assert_same_counts(py, sc) -> None:
    mismatched = {u: (py.per_utt[u], sc.per_utt[u]) for u in sc.per_utt
                  if py.per_utt.get(u) != sc.per_utt[u]}
    assert not mismatched, f"python vs sclite: {dict(list(mismatched.items())[:5])}"
    assert set(py.per_utt) == set(sc.per_utt)
    for name in ("n_utt", "n_ref", "corr", "sub", "dele", "ins", "n_utt_err"):
        assert getattr(py, name) == getattr(sc, name), name


def _sclite_sum_avg(result_txt: Path) -> List[str]:
    """The fields of the first ``Sum/Avg`` row of an sclite report."""
    text = result_txt.read_text(encoding="utf-8", errors="replace")
    row = next(line for line in text.splitlines() if "Sum/Avg" in line)
    return re.sub(r"[|]", " ", row.replace("Sum/Avg", "")).split()


def _write(path: Path, lines: Sequence[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------------ tokenisation

def test_tokenize_char_word_and_nlsyms():
    assert tokenize("今日は良い天気", "char") == list("今日は良い天気")
    assert tokenize("  ab  c\td ", "char") == ["a", "b", "<space>", "c", "<space>", "d"]
    assert tokenize("  HELLO   world\t", "word") == ["HELLO", "world"]
    assert tokenize("", "char") == [] and tokenize("   ", "word") == []
    assert tokenize("a <noise> b", "word", ["<noise>"]) == ["a", "b"]
    assert tokenize("あ<noise>い", "char", ["<noise>"]) == ["あ", "い"]
    with pytest.raises(ValueError, match="unknown scoring unit"):
        tokenize("a", "bpe")


def test_trn_files_equal_espnet_stage13(tmp_path):
    """ref.trn/hyp.trn are byte-identical to tokenize_text + paste (asr.sh stage 13)."""
    from espnet2.bin import tokenize_text  # slow import (g2p modules): only here

    lines = ["A01M0097_0000211_0001000 えーと今日は  良い天気", "A01M0097_0001100_0002000",
             "B-spk_0001 HELLO  world\tagain <noise>", "B-spk_0002 @ x* ; ( \\"]
    utt2spk = {"A01M0097_0000211_0001000": "A01M0097",
               "A01M0097_0001100_0002000": "A01M0097",
               "B-spk_0001": "B-spk", "B-spk_0002": "B-spk"}
    text_file = _write(tmp_path / "data/text", lines)
    nlsyms = _write(tmp_path / "data/nlsyms", ["<noise>"])
    texts = {ln.split(maxsplit=1)[0]: (ln.split(maxsplit=1) + [""])[1] for ln in lines}
    for unit in ("char", "word"):
        tok_file = tmp_path / f"espnet_{unit}.tok"
        tokenize_text.main(["-f", "2-", "--input", str(text_file), "--output", str(tok_file),
                            "--token_type", unit, "--non_linguistic_symbols", str(nlsyms),
                            "--remove_non_linguistic_symbols", "true"])
        tokens = tok_file.read_text(encoding="utf-8").splitlines()
        # paste <(tokens) <(<utt2spk awk '{ print "(" $2 "-" $1 ")" }')
        expected = "".join(f"{t}\t({utt2spk[u]}-{u})\n" for t, u in zip(tokens, sorted(texts)))
        score(texts, texts, unit, backend="python", utt2spk=utt2spk,
              non_linguistic_symbols=["<noise>"], output_dir=tmp_path / unit)
        assert (tmp_path / unit / "ref.trn").read_text(encoding="utf-8") == expected
        assert (tmp_path / unit / "hyp.trn").read_text(encoding="utf-8") == expected


# ------------------------------------------------------------- alignment (no sclite)

@pytest.mark.parametrize("ref,hyp,expected", [
    # (C, S, D, I); worked by hand with the DP rules in align.py, confirmed with sclite
    ("a b c d", "a x c", (2, 1, 1, 0)),
    ("a b", "a b c", (2, 0, 0, 1)),
    ("", "p q", (0, 0, 0, 2)),
    ("x y", "", (0, 0, 2, 0)),
    ("", "", (0, 0, 0, 0)),
    ("a b", "b a", (1, 0, 1, 1)),
    ("a b c", "c x y", (0, 3, 0, 0)),          # tie S+S+S vs D D C I I: diagonal wins
    ("a b c d e", "d e x y z", (2, 0, 3, 3)),  # 4S+3(D+I): 18 < 20 for 5 S
    ("A B", "a b", (2, 0, 0, 0)),              # ASCII case is folded
    ("À Σ Ａ", "à σ ａ", (0, 3, 0, 0)),          # non-ASCII case is not
    ("a @ b", "a b", (2, 0, 0, 0)),            # "@" is sclite's NULL word
    ("x* x;tag \\y", "x x y", (3, 0, 0, 0)),   # trailing *, tags and escapes
])
def test_hand_worked_counts(ref, hyp, expected):
    assert count_errors(ref.split(), hyp.split()) == AlignCounts(*expected)


def test_alignment_operations_follow_sclite_tie_order():
    # D[2][2] of a b / b a: diagonal 8, deletion 6, insertion 6 -> insertion (sclite
    # prints REF "A b *", HYP "* b A")
    assert align(["a", "b"], ["b", "a"]) == [("D", 0, -1), ("C", 1, 0), ("I", -1, 1)]


def test_alignment_is_minimal_and_consistent():
    """The alignment minimises 4S+3(D+I) and is a valid alignment of both sequences."""
    pairs = _random_pairs(seed=1, n=300, alphabet="abc", max_len=9)
    pairs += [("a b c d e".split(), "d e x y z".split())]
    exceeded = 0
    for ref, hyp in pairs:
        ops = align(ref, hyp)
        counts = count_errors(ref, hyp)
        assert [i for op, i, _ in ops if op != "I"] == list(range(len(ref)))
        assert [j for op, _, j in ops if op != "D"] == list(range(len(hyp)))
        for op, i, j in ops:
            if op in "CS":
                assert (ref[i] == hyp[j]) == (op == "C")
        assert 4 * counts.sub + 3 * (counts.dele + counts.ins) == _slow_costs(ref, hyp, 4, 3)
        levenshtein = _slow_costs(ref, hyp, 1, 1)
        assert counts.errors >= levenshtein
        exceeded += counts.errors > levenshtein
    assert exceeded >= 1  # at least the d e x y z case


def test_sclite_words_rejects_alternations_and_comment_lines():
    with pytest.raises(ValueError, match="alternation"):
        sclite_words(["a", "{b", "/", "c}"])
    with pytest.raises(ValueError, match="comment"):
        sclite_words([";;x", "b"])
    with pytest.raises(ValueError, match="comment"):
        sclite_words(["**", "b"])
    assert sclite_words(["b", ";;x", "A@"]) == ["b", "", "a@"]


@pytest.mark.parametrize("num,den,expected", [
    # values printed by sclite 2.10 (round half away from zero on num/den*100)
    (3, 2000, 0.2), (1, 400, 0.3), (7, 2000, 0.4), (1, 2000, 0.1), (9, 2000, 0.5),
    (1, 8, 12.5), (2, 3, 66.7), (399, 400, 99.8), (0, 0, 0.0), (5, 0, 0.0),
])
def test_sclite_percent(num, den, expected):
    assert sclite_percent(num, den) == expected


# ------------------------------------------------------------------ score() behaviour

def test_missing_hypothesis_is_counted_and_logged(caplog):
    ref = {"u1": "a b c", "u2": "d e"}
    with caplog.at_level(logging.WARNING):
        counts = score(ref, {"u1": "a b c"}, "word", backend="python")
    assert counts.missing_hyp == ["u2"]
    assert (counts.corr, counts.dele, counts.n_ref, counts.n_utt_err) == (3, 2, 5, 1)
    assert "u2" in caplog.text and "no hypothesis" in caplog.text


def test_hypothesis_without_reference_is_an_error():
    with pytest.raises(ValueError, match="'ghost'"):
        score({"u1": "a"}, {"u1": "a", "ghost": "b"}, "char", backend="python")


def test_bad_tokens_name_the_utterance():
    with pytest.raises(ValueError, match="'u2'.*alternation"):
        score({"u1": "a", "u2": "x {y"}, {"u1": "a"}, "word", backend="python")


def test_empty_references_give_zero_percent_and_nan_rate():
    counts = score({"u1": "", "u2": " "}, {"u1": "x"}, "char", backend="python")
    assert (counts.n_ref, counts.ins, counts.n_utt_err) == (0, 1, 1)
    assert math.isnan(counts.err_rate)
    assert counts.markdown_row("s") == "|s|2|0|0.0|0.0|0.0|0.0|0.0|50.0|"


def test_backend_selection(monkeypatch, tmp_path):
    monkeypatch.setattr(sclite_mod, "DEBIAN_SCLITE", str(tmp_path / "none"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("SCLITE", raising=False)
    assert score({"u": "a"}, {"u": "b"}, "char").backend == "python"
    with pytest.raises(FileNotFoundError, match="sclite"):
        score({"u": "a"}, {"u": "b"}, "char", backend="sclite")
    monkeypatch.setenv("SCLITE", str(tmp_path / "missing_sclite"))
    with pytest.raises(FileNotFoundError, match="SCLITE"):
        score({"u": "a"}, {"u": "b"}, "char", backend="auto")
    with pytest.raises(ValueError, match="backend"):
        score({"u": "a"}, {"u": "b"}, "char", backend="kaldi")


# ------------------------------------------------------------- agreement with sclite

PREPARED = {
    # uttid: (ref, hyp)
    "sub": ("the cat sat on the mat", "the hat sat on a mat"),
    "ins": ("a b", "x a y b z"),
    "del": ("one two three four", "two four"),
    "empty_hyp": ("some words here", ""),
    "empty_ref": ("", "spurious words"),
    "both_empty": ("", ""),
    "short_ref": ("a", "b c a d"),
    "tie": ("a b c", "c x y"),
    "weighted": ("a b c d e", "d e x y z"),
    "case": ("HELLO World", "hello WORLD"),
    "ja_1": ("えーと今日は良い天気です", "えと今日はいい天気でした"),
    "ja_2": ("東京特許許可局", "東京都特許局"),
    "ja_spaced": ("国立 国語 研究所", "国立国語 研究所です"),
    "mixed": ("CSJ コーパス の 評価", "csj コーパスの 評価 だ"),
    "specials": ("a @ b x* c;t \\d ( ) ;", "a b x c d ( ) \\"),
    "nonascii_case": ("À Σ Ａ é", "à σ ａ É"),
    "Upper_ID-1": ("x y z", "x z"),
}


@needs_sclite
@pytest.mark.parametrize("unit", ["char", "word"])
def test_prepared_pairs_equal_sclite(unit, tmp_path):
    ref = {u: r for u, (r, _) in PREPARED.items()}
    hyp = {u: h for u, (_, h) in PREPARED.items() if u != "empty_hyp"}
    hyp["missing_made_empty"] = ""
    ref["missing_made_empty"] = "nothing decoded"
    py, sc = _both_backends(ref, hyp, unit, tmp_path)
    _assert_same_counts(py, sc)
    assert sc.backend == "sclite" and py.backend == "python"
    assert py.missing_hyp == ["empty_hyp"]
    fields = _sclite_sum_avg(tmp_path / f"sc_{unit}" / "result.txt")
    assert py.markdown_row("x").split("|")[2:-1] == fields


@needs_sclite
def test_random_word_pairs_equal_sclite(tmp_path):
    """Random pairs from small alphabets, with sclite's NULL word and token quirks."""
    pairs = (_random_pairs(seed=7, n=150, alphabet="abc", max_len=12)
             # NULL words: sclite's 0.001 costs in float32 decide near-ties here
             + _random_pairs(seed=8, n=2000, alphabet=list("abc") + ["@"], max_len=12)
             + _random_pairs(seed=12, n=6, alphabet=list("abc") + ["@"], max_len=300)
             + _random_pairs(seed=9, n=100, alphabet=["a", "A", "b", "@", ";", "\\", "x*",
                                                      "x", "(x)", "-x", "あ", "ア", "À"],
                             max_len=10)
             + _random_pairs(seed=10, n=10, alphabet="abcd", max_len=150))
    ref = {f"r{k:04d}": " ".join(r) for k, (r, _) in enumerate(pairs)}
    hyp = {f"r{k:04d}": " ".join(h) for k, (_, h) in enumerate(pairs)}
    rng = random.Random(3)
    utt2spk = {u: f"spk{rng.randint(0, 4)}" for u in ref}
    py, sc = _both_backends(ref, hyp, "word", tmp_path, utt2spk=utt2spk)
    _assert_same_counts(py, sc)
    assert py.markdown_row("x").split("|")[2:-1] == _sclite_sum_avg(
        tmp_path / "sc_word" / "result.txt")


@needs_sclite
def test_random_char_strings_equal_sclite(tmp_path):
    rng = random.Random(11)
    alphabet = "ああいう aA@*;\\"
    ref, hyp = {}, {}
    for k in range(200):
        ref[f"c{k}"] = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
        hyp[f"c{k}"] = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14)))
    py, sc = _both_backends(ref, hyp, "char", tmp_path)
    _assert_same_counts(py, sc)


# ------------------------------------------------------------------------------- CLI

def test_cli_end_to_end(tmp_path, capsys):
    ref1 = _write(tmp_path / "data/eval1/text", ["u1 今日は良い天気", "u2 ABC def", "u3"])
    _write(tmp_path / "data/eval1/utt2spk", ["u1 s1", "u2 s1", "u3 s2"])
    hyp1 = _write(tmp_path / "exp/eval1/text", ["u1 今日はいい天気", "u2 abc", "u3 p"])
    ref2 = _write(tmp_path / "data/eval2/text", ["v1 a b c"])
    hyp2 = _write(tmp_path / "exp/eval2/text", ["v1 a c"])
    out = tmp_path / "exp/score"
    recipe_main(["score", "--set", "eval1", str(ref1), str(hyp1), "--set", "eval2", str(ref2),
                    str(hyp2), "--unit", "char", "--unit", "word", "--output_dir", str(out),
                    "--backend", "python", "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["dataset"], r["unit"]) for r in records] == [
        ("eval1", "char"), ("eval1", "word"), ("eval2", "char"), ("eval2", "word")]
    for r in records:
        sdir = Path(r["score_dir"])
        assert sdir == out / r["dataset"] / ("score_cer" if r["unit"] == "char"
                                             else "score_wer")
        assert {p.name for p in sdir.iterdir()} == {"ref.trn", "hyp.trn", "result.txt"}
    e1c = records[0]
    # 今日は良い天気 vs 今日はいい天気: 良->い S, い C ; ABC def vs abc: 3 C, 4 D
    # (<space> d e f); u3: 1 I
    assert (e1c["corr"], e1c["sub"], e1c["del"], e1c["ins"]) == (9, 1, 4, 1)
    assert (e1c["snt"], e1c["wrd"], e1c["snt_err"]) == (3, 14, 3)
    assert "(s1-u1)" in (out / "eval1/score_cer/ref.trn").read_text(encoding="utf-8")
    assert records[3]["percent"]["Err"] == 33.3

    recipe_main(["score", "--ref_text", str(ref2), "--hyp_text", str(hyp2), "--output_dir",
                    str(tmp_path / "single"), "--backend", "python"])
    md = capsys.readouterr().out
    assert "### CER" in md and "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|" in md
    # a b c vs a c at char level: a <space> b <space> c -> 3 C, 2 D of 5
    assert "|eval2|1|5|60.0|0.0|40.0|0.0|40.0|100.0|" in md
    assert (tmp_path / "single/score_cer/result.txt").is_file()


def test_cli_errors(tmp_path, capsys):
    ref = _write(tmp_path / "ref/text", ["u1 a b"])
    hyp = _write(tmp_path / "hyp/text", ["u1 a b", "stray_utt c"])
    with pytest.raises(SystemExit) as exc:
        recipe_main(["score", "--ref_text", str(ref), "--hyp_text", str(hyp),
                        "--output_dir", str(tmp_path / "o"), "--backend", "python"])
    assert "stray_utt" in str(exc.value.code) and str(hyp) in str(exc.value.code)
    tabbed = _write(tmp_path / "tab/text", ["u1\ta b"])
    with pytest.raises(SystemExit) as exc:
        recipe_main(["score", "--ref_text", str(tabbed), "--hyp_text", str(tabbed),
                        "--output_dir", str(tmp_path / "o")])
    assert "whitespace" in str(exc.value.code)
    with pytest.raises(SystemExit) as exc:
        recipe_main(["score", "--output_dir", str(tmp_path / "o")])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        recipe_main(["score", "--help"])
    assert exc.value.code == 0 and "score_cer" in capsys.readouterr().out
