"""Template sentences for the synthetic Japanese demo corpus.

The demo corpus must be shippable and reproducible, so its text is generated here from
templates written for this project: dates, times, prices, counts, places, weather and a
few everyday phrases. Numbers are written in kanji numerals as in CSJ's transcripts
(``三月十五日``, ``千二百円``), the vocabulary is bounded (a few hundred distinct
characters) and the sentences are short (about 1-4 s of speech), so that a small
character-level model can learn the corpus on a CPU.

Each :class:`Sentence` has two forms: ``tts_text`` keeps punctuation (``、。？``) so that
the synthesizer places pauses and question intonation, and ``text`` is the transcript,
without punctuation, as in CSJ.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, List, Sequence

# Punctuation that only shapes the synthesized prosody; never part of a transcript.
TTS_ONLY_PUNCTUATION = "、。？"

_DIGITS = "〇一二三四五六七八九"

_PLACES = ("東京", "大阪", "京都", "名古屋", "横浜", "神戸", "札幌", "福岡", "仙台", "広島",
           "新宿", "渋谷", "品川", "上野", "池袋", "奈良", "金沢", "長野", "静岡", "博多")
_FACILITIES = ("駅", "空港", "病院", "図書館", "郵便局", "銀行", "公園", "市役所", "美術館",
               "ホテル", "デパート", "本屋", "交番", "映画館")
_TRANSPORT = ("電車", "バス", "車", "自転車", "新幹線", "タクシー", "飛行機")
_PEOPLE = ("田中さん", "鈴木さん", "佐藤さん", "高橋さん", "山本さん", "中村さん", "先生",
           "母", "父", "兄", "姉", "弟", "妹", "友達", "部長")
_EVENTS = ("会議", "授業", "試験", "面接", "打ち合わせ", "発表", "説明会", "練習", "診察",
           "食事会")
_DAYS = ("今日", "明日", "昨日", "あさって")
_FUTURE_DAYS = ("今日", "明日", "あさって", "来週")
_WEEKDAYS = "月火水木金土日"
# OpenJTalk misreads 晴れのち as ハレレノチ, so 晴れ only starts a 時々 forecast.
_WEATHER = ("晴れ", "雨", "曇り", "雪", "晴れ時々曇り", "曇りのち雨", "雨のち晴れ",
            "曇りのち晴れ", "曇り時々雨", "雨のち曇り")
# (item, counter) pairs: the counter that item takes in everyday speech.
_ITEMS = (("りんご", "個"), ("みかん", "個"), ("卵", "個"), ("パン", "個"), ("牛乳", "本"),
          ("ジュース", "本"), ("傘", "本"), ("鉛筆", "本"), ("切符", "枚"), ("シャツ", "枚"),
          ("切手", "枚"), ("本", "冊"), ("ノート", "冊"), ("辞書", "冊"), ("コーヒー", "杯"),
          ("お茶", "杯"), ("弁当", "個"), ("時計", "個"), ("かばん", "個"))
_PHRASES = ("おはようございます", "こんにちは", "こんばんは", "ありがとうございます",
            "すみません", "よろしくお願いします", "お疲れさまでした", "いただきます",
            "ごちそうさまでした", "お先に失礼します", "少々お待ちください", "また明日",
            "お元気ですか", "はじめまして", "どうぞよろしく", "気をつけて",
            "お大事に", "おやすみなさい", "いってきます", "ただいま")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# Minutes past the hour; OpenJTalk reads 五分, 八分 and 十二分 as ゴブ, ハチブ and ジューニブン.
MINUTES = tuple(m for m in range(1, 60) if m not in (5, 8, 12))


@dataclass(frozen=True)
class Sentence:
    """One generated sentence: ``text`` is the transcript, ``tts_text`` what is spoken."""

    text: str
    tts_text: str


def kanji_number(n: int) -> str:
    """Write ``n`` (1 <= n < 10**8) in kanji numerals, e.g. 1200 -> 千二百, 10000 -> 一万."""
    if not 1 <= n < 10**8:
        raise ValueError(f"kanji_number supports 1 <= n < 10**8, got {n}")
    man, rest = divmod(n, 10000)
    out = (_below_10000(man) + "万") if man else ""
    return out + _below_10000(rest)


def _below_10000(n: int) -> str:
    """Kanji numerals for 0 <= n < 10000 ('' for 0); a leading 1 of 十/百/千 is dropped."""
    out = ""
    for value, unit in ((1000, "千"), (100, "百"), (10, "十")):
        digit, n = divmod(n, value)
        if digit:
            out += ("" if digit == 1 else _DIGITS[digit]) + unit
    return out + (_DIGITS[n] if n else "")


def _date(rng: random.Random) -> str:
    month = rng.randint(1, 12)
    day = rng.randint(1, _DAYS_IN_MONTH[month - 1])
    return f"{kanji_number(month)}月{kanji_number(day)}日"


def _clock(rng: random.Random) -> str:
    """A time of day such as 午後三時半, 十時十五分 or 午前九時."""
    prefix, first, last = rng.choice((("午前", 5, 11), ("午後", 1, 11), ("", 1, 12)))
    out = prefix + kanji_number(rng.randint(first, last)) + "時"
    minute = rng.choice((0, 0, 30, 30, rng.choice(MINUTES)))
    if minute == 30 and rng.random() < 0.5:
        return out + "半"
    return out + (kanji_number(minute) + "分" if minute else "")


def _price(rng: random.Random) -> str:
    """A price in yen from 十 to 九千九百九十 (a multiple of ten)."""
    return kanji_number(rng.randint(1, 999) * 10)


def _small(rng: random.Random, low: int = 1, high: int = 10) -> str:
    return kanji_number(rng.randint(low, high))


def _item_count(rng: random.Random) -> tuple[str, str]:
    item, counter = rng.choice(_ITEMS)
    return item, _small(rng, 1, 9) + counter


def _place(rng: random.Random) -> str:
    return rng.choice(_PLACES) + rng.choice(_FACILITIES)


def _t_weekday(r: random.Random) -> str:
    return f"{_date(r)}は{r.choice(_WEEKDAYS)}曜日です。"


def _t_reldate(r: random.Random) -> str:
    return f"{r.choice(_DAYS)}は{_date(r)}です。"


def _t_event_time(r: random.Random) -> str:
    return f"{r.choice(_EVENTS)}は{_clock(r)}からです。"


def _t_meet_time(r: random.Random) -> str:
    return f"{_clock(r)}に会いましょう。"


def _t_meet_place(r: random.Random) -> str:
    return f"{_place(r)}で会いましょう。"


def _t_price(r: random.Random) -> str:
    return f"{r.choice(('この', 'その', ''))}{r.choice(_ITEMS)[0]}は{_price(r)}円です。"


def _t_order(r: random.Random) -> str:
    item, count = _item_count(r)
    return f"{item}を{count}ください。"


def _t_travel(r: random.Random) -> str:
    minutes = kanji_number(r.randint(3, 12) * 5)  # from 十五: 十分 also reads ジューブン
    return f"{r.choice(_PLACES)}まで{r.choice(_TRANSPORT)}で{minutes}分です。"


def _t_where(r: random.Random) -> str:
    return f"{_place(r)}はどこですか？"


def _t_weather(r: random.Random) -> str:
    return f"{r.choice(_FUTURE_DAYS)}の{r.choice(_PLACES)}は{r.choice(_WEATHER)}でしょう。"


def _t_temperature(r: random.Random) -> str:
    return f"{r.choice(_PLACES)}の気温は{_small(r, 1, 35)}度です。"


def _t_person_goes(r: random.Random) -> str:
    return f"{r.choice(_PEOPLE)}は{r.choice(_FUTURE_DAYS)}{r.choice(_PLACES)}へ行きます。"


def _t_next_stop(r: random.Random) -> str:
    here, after = r.sample(_PLACES, 2)
    return f"次は{here}、{after}です。"


def _t_platform(r: random.Random) -> str:
    return f"{r.choice(_PLACES)}行きは{_small(r, 1, 12)}番線です。"


def _t_floor(r: random.Random) -> str:
    return f"{r.choice(('会議室', '受付', '売り場', '食堂'))}は{_small(r, 1, 9)}階です。"


def _t_received(r: random.Random) -> str:
    item, count = _item_count(r)
    return f"{r.choice(_PEOPLE)}に{item}を{count}もらいました。"


def _t_birth_year(r: random.Random) -> str:
    return f"{kanji_number(r.randint(1950, 2024))}年生まれです。"


def _t_birthday(r: random.Random) -> str:
    return f"誕生日は{_date(r)}です。"


def _t_reservation(r: random.Random) -> str:
    return f"{r.choice((_date, _clock))(r)}に予約します。"


def _t_people(r: random.Random) -> str:
    return f"{r.choice(('会議', '教室', '店', '部屋'))}に{_small(r, 2, 30)}人います。"


def _t_phrase(r: random.Random) -> str:
    return r.choice(_PHRASES) + "。"


def _t_phrase_person(r: random.Random) -> str:
    return f"{r.choice(_PEOPLE)}、{r.choice(_PHRASES)}。"


_TEMPLATES: Sequence[Callable[[random.Random], str]] = (
    _t_weekday, _t_reldate, _t_event_time, _t_meet_time, _t_meet_place, _t_price,
    _t_order, _t_travel, _t_where, _t_weather, _t_temperature, _t_person_goes,
    _t_next_stop, _t_platform, _t_floor, _t_received, _t_birth_year, _t_birthday,
    _t_reservation, _t_people, _t_phrase, _t_phrase_person,
)


def to_transcript(tts_text: str) -> str:
    """Drop the prosody-only punctuation, giving the CSJ-style transcript."""
    return "".join(c for c in tts_text if c not in TTS_ONLY_PUNCTUATION)


def generate_sentences(num: int, seed: int) -> List[Sentence]:
    """Return ``num`` sentences with distinct transcripts, deterministic in ``seed``.

    The templates hold far more combinations than a demo needs; up to about 50,000
    distinct sentences per seed come out quickly (later ones need ever more draws).

    The list is a prefix of one stream per seed: ``generate_sentences(n, s)`` starts with
    ``generate_sentences(m, s)`` for m < n, so taking dev/test from the front keeps them
    fixed when only the training size changes.

    Raises:
        ValueError: ``num`` is negative, or the templates could not give ``num`` distinct
            sentences (far beyond the corpus sizes this is meant for).
    """
    if num < 0:
        raise ValueError(f"number of sentences must be >= 0, got {num}")
    rng = random.Random(seed)
    sentences: List[Sentence] = []
    seen: set = set()
    max_draws = 100 * num + 1000
    for _ in range(max_draws):
        if len(sentences) == num:
            break
        tts_text = rng.choice(_TEMPLATES)(rng)
        text = to_transcript(tts_text)
        if text not in seen:
            seen.add(text)
            sentences.append(Sentence(text=text, tts_text=tts_text))
    if len(sentences) < num:
        raise ValueError(f"only {len(sentences)} distinct sentences found in {max_draws} "
                         f"draws (asked for {num})")
    return sentences
