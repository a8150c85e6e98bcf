"""Answer extraction, per-item scoring and CoT-style detection; all pure. What answer an item has
(number, letter, text) comes from its benchmark's spec in :mod:`lens_steer.data.registry`."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from lens_steer.data.registry import LETTERS, Example, answer_kind

__all__ = [
    "ItemScore",
    "canonical_number",
    "extract_choice",
    "extract_number",
    "extract_text_answer",
    "is_cot_style",
    "repetition",
    "score",
]

# A number as written in prose: optional sign and "$", thousands commas, decimals.
_NUM = r"[-−]?\$?\s?[-−]?(?:\d[\d,]*(?:\.\d+)?|\.\d+)"
_NUM_RE = re.compile(rf"(?<![\w.]){_NUM}")
_HASH_RE = re.compile(rf"####\s*({_NUM})")
_BOXED_RE = re.compile(r"\\boxed\s*\{([^{}]*)\}")
# "The answer is", "final answer:", "Answer =" (the keyword, then is/:/=).
_ANSWER_KW_RE = re.compile(r"\banswer\b\**\s*(?:is\b|:|=)", re.IGNORECASE)


def canonical_number(text: str) -> str | None:
    """Normalise a number string: no ``$``/commas, ``3.50`` -> ``3.5``, ``7.0`` -> ``7``.

    Args:
        text: A number as written, e.g. ``"$1,234."`` or ``"-5"``.

    Returns:
        The canonical string, or None when ``text`` is not a number.
    """
    s = text.strip().replace("−", "-").replace("–", "-").replace(",", "").replace("$", "").replace(" ", "")
    s = s.rstrip(".")
    if s.startswith("+"):
        s = s[1:]
    s = "".join(str(unicodedata.decimal(ch, ch)) for ch in s)  # other scripts' digits ("٣") as ASCII
    m = re.fullmatch(r"(-?)(\d*)(?:\.(\d*))?", s)
    if m is None or not (m.group(2) or m.group(3)):
        return None
    # on the digits, not through int() or Decimal: exact at any length (int() refuses > 4300 digits)
    whole, frac = m.group(2).lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    value = f"{whole}.{frac}" if frac else whole
    return value if value == "0" else m.group(1) + value


def _numbers(text: str) -> list[tuple[int, str]]:
    """``(end position, canonical number)`` for each number in ``text``."""
    out = []
    for m in _NUM_RE.finditer(text):
        value = canonical_number(m.group(0).rstrip(","))
        if value is not None:
            out.append((m.end(), value))
    return out


def extract_number(response: str) -> str | None:
    """Extract the final numeric answer (GSM8K style) from free-form reasoning.

    Priority: the last ``#### N``; else the last explicit statement (``The answer is N``,
    ``Answer: N``, ``\\boxed{N}``), taking the first number on the rest of that line;
    else the last number anywhere in the text.

    Args:
        response: Model output.

    Returns:
        The number as :func:`canonical_number` writes it, or None when there is none.
    """
    hashes = list(_HASH_RE.finditer(response))
    if hashes:
        value = canonical_number(hashes[-1].group(1).rstrip(","))
        if value is not None:
            return value
    statements: list[tuple[int, str]] = []
    for m in _ANSWER_KW_RE.finditer(response):
        rest = response[m.end() :].split("\n", 1)[0][:80]
        if "=" in rest:  # "The answer is 10 - 3 = 7": the result follows the last "="
            rest = rest.rsplit("=", 1)[1]
        nums = _numbers(rest)
        if nums:
            statements.append((m.start(), nums[0][1]))
    for m in _BOXED_RE.finditer(response):
        nums = _numbers(m.group(1))
        if nums:
            statements.append((m.start(), nums[-1][1]))
    if statements:
        return max(statements)[1]
    nums = _numbers(response)
    return nums[-1][1] if nums else None


def _letter_class(n_choices: int) -> str:
    n = n_choices if n_choices > 0 else 5
    return f"[A-{LETTERS[min(n, len(LETTERS)) - 1]}]"


def extract_choice(response: str, choices: Sequence[str]) -> str | None:
    """Extract a multiple-choice letter from free text.

    Tried in order, each tier taking its last match in the text:

    1. An explicit statement: ``answer is (B)``, ``Answer: B``, ``answer is **B**``,
       ``option B is correct``, ``B is the correct answer``, ``\\boxed{B}`` (also ``\\boxed{\\text{B}}``,
       ``\\boxed{B) text}``), as Qwen2.5 models state a chosen option.
    2. A line that is only a letter: ``B``, ``(B)``, ``B.``, ``**B**``.
    3. A bold letter (``**B**``, ``**(B)**``) or a parenthesised letter ``(B)``.
    4. A response starting with ``B.``, ``B)`` or ``B:``.
    5. The text of a choice (case-insensitive, whole words): the one ending last,
       the longest on a tie.

    Letters must be upper case (lower case only as ``answer is (c)``) and within the choices
    (A-E when ``choices`` is empty); a bare capital letter in prose ("A train leaves...")
    never counts.

    Args:
        response: Model output.
        choices: Option texts, in letter order.

    Returns:
        The letter, or None when nothing parses.
    """
    L = _letter_class(len(choices))
    open_ = r"[\(\[]?\**\s*"
    close = r"(?![\w'’-])"
    tiers = [
        [
            rf"(?i:\banswer\b)\**\s*(?i:is|:|=)?\s*:?\s*(?i:(?:option|choice)\s*)?:?\s*\**{open_}({L}){close}",
            rf"(?i:\banswer\b)\**\s*(?i:is|:|=)?\s*:?\s*(?i:(?:option|choice)\s*)?:?\s*\**\(({L.lower()})\)",
            rf"(?i:\b(?:option|choice))\s*[\(\[]?({L})[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b",
            rf"(?<![\w'])[\(\[]?({L})[\)\]]?\s+is\s+(?:the\s+)?(?:correct|right|best)(?:\s+answer)?\b",
            rf"\\boxed\s*\{{\s*(?:\\text(?:bf)?\s*\{{)?\s*[\(\[]?({L})[\)\]]?\s*(?:[.:)][^{{}}]*)?\}}",
        ],
        [rf"(?m)^[ \t]*[\(\[]?\**\s*({L})\s*\**[\)\]]?\s*[.:)]?\s*\**[ \t]*$"],
        [rf"\*\*\s*[\(\[]?({L})[\)\]]?\s*[.:]?\s*\*\*", rf"\(({L})\)"],
        [rf"\A\s*[\(\[]?({L})[\)\].:](?:\s|$)"],
    ]
    for patterns in tiers:
        best: tuple[int, str] | None = None
        for pattern in patterns:
            for m in re.finditer(pattern, response):
                if best is None or m.start(1) > best[0]:
                    best = (m.start(1), m.group(1).upper())
        if best is not None:
            return best[1]
    found: tuple[int, int, str] | None = None
    for i, choice in enumerate(choices):
        text = choice.strip()
        if not text:
            continue
        pattern = rf"(?<!\w){re.escape(text)}(?!\w)"
        for m in re.finditer(pattern, response, flags=re.IGNORECASE):
            key = (m.end(), len(text), LETTERS[i])
            if found is None or key[:2] > found[:2]:
                found = key
    return found[2] if found else None


def _normalise_text(text: str) -> str:
    text = re.sub(r"\s+", " ", text).lower()
    return text.strip(" .!\"'`*")


def extract_text_answer(response: str) -> str | None:
    """Extract a free-text answer.

    It is the rest of the line after the last ``answer is`` / ``Answer:``, else the last
    non-empty line.

    Args:
        response: Model output.

    Returns:
        The answer text, stripped, or None for an empty response.
    """
    matches = list(_ANSWER_KW_RE.finditer(response))
    if matches:
        rest = response[matches[-1].end() :].split("\n", 1)[0].lstrip(" \t:*").rstrip(" \t*")
        if rest:
            return rest
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    return lines[-1] if lines else None


@dataclass(frozen=True)
class ItemScore:
    """Outcome of scoring one response.

    Attributes:
        predicted: The extracted answer (canonical number, letter or text), None if unparsed.
        correct: Whether it equals the gold answer; never True when unparsed.
        parsed: Whether an answer could be extracted.
    """

    predicted: str | None
    correct: bool
    parsed: bool


def score(example: Example, response: str) -> ItemScore:
    """Score a response against an example.

    Multiple choice (``example.choices`` non-empty): :func:`extract_choice` compared with the
    gold letter. Numeric gold (a benchmark whose spec's ``answer_kind`` is ``"number"``, e.g.
    GSM8K, or any gold that is a number): :func:`extract_number` compared after
    :func:`canonical_number`. Other free-form gold (generative BBL):
    :func:`extract_text_answer` compared case- and whitespace-insensitively.

    Args:
        example: The item, with its gold ``answer``.
        response: Model output.

    Returns:
        The :class:`ItemScore`.
    """
    if example.choices:
        predicted = extract_choice(response, example.choices)
        gold: str | None = example.answer.strip()
    else:
        gold = canonical_number(example.answer)
        if gold is not None or answer_kind(example.source) == "number":
            predicted = extract_number(response)
        else:
            text = extract_text_answer(response)
            predicted = _normalise_text(text) if text is not None else None
            predicted = predicted or None
            gold = _normalise_text(example.answer)
    parsed = predicted is not None
    return ItemScore(predicted=predicted, correct=parsed and predicted == gold, parsed=parsed)


# ---------------------------------------------------------------------------
# CoT style

_ANSWER_POS_PATTERNS = [
    re.compile(r"####"),
    re.compile(r"\\boxed\s*\{"),
    re.compile(r"\b(?:the\s+)?(?:final\s+|correct\s+)?answer\b\**\s*(?:is\b|:|=)", re.IGNORECASE),
]
# A response that opens with the answer: "B", "(B).", "B. Paris", "18", "$18." on its first line.
_LEADING_ANSWER = re.compile(
    r"\A\s*\**(?:"
    r"(?:\([A-Z]\)|[A-Z][.:)])(?:\s|$)"  # "(B) ...", "B. ..."
    r"|[A-Z]\**[ \t]*(?:\n|$)"  # a lone letter on the first line
    r"|\$?-?\d[\d,]*(?:\.\d+)?[ \t]*\.?[ \t]*(?:\n|$)"  # a lone number on the first line
    r")"
)
_STEP_MARKERS = [
    re.compile(r"\bstep\s*\d+", re.IGNORECASE),
    re.compile(r"\b(?:first(?:ly)?|to begin(?: with)?|let'?s think)\b\s*[,:]", re.IGNORECASE),
    re.compile(r"=\s*\$?-?\d"),
]
_NUMBERED_LINE = re.compile(r"(?m)^\s*(?:\d+[.)]|[-*•])\s+\S")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")

COT_MIN_SENTENCES = 2
"""Reasoning sentences (of >= 3 words) before the answer that make a response CoT style."""
COT_MIN_WORDS_NO_ANSWER = 30
"""Words that make a response with no stated answer CoT style."""


def _answer_position(response: str) -> int | None:
    if _LEADING_ANSWER.match(response):
        return 0
    starts = [m.start() for p in _ANSWER_POS_PATTERNS if (m := p.search(response))]
    return min(starts) if starts else None


def is_cot_style(response: str) -> bool:
    """Whether a response reasons before it answers.

    Definition. Let the answer position be where the final answer is first stated: the
    first ``####``, ``\\boxed{``, or ``answer is`` / ``answer:`` (``final``/``correct``
    answer included), or position 0 when the response opens with the answer (a first
    token like ``B.``, ``(B)``, or a first line that is only a number). The response is
    CoT style when the text before that position holds reasoning, i.e. at least
    :data:`COT_MIN_SENTENCES` sentences/lines of >= 3 words, or a step marker
    (``Step 1``, ``First,``, ``Let's think:``, an ``= <number>`` computation, or a
    numbered/bulleted list of >= 2 lines). When no answer is stated at all, it is CoT
    style when it has at least :data:`COT_MIN_WORDS_NO_ANSWER` words.

    Args:
        response: Model output.

    Returns:
        True for CoT style.
    """
    pos = _answer_position(response)
    if pos is None:
        return len(response.split()) >= COT_MIN_WORDS_NO_ANSWER
    before = response[:pos]
    if any(p.search(before) for p in _STEP_MARKERS):
        return True
    if len(_NUMBERED_LINE.findall(before)) >= 2:
        return True
    sentences = [s for s in _SENTENCE_SPLIT.split(before) if len(s.split()) >= 3]
    return len(sentences) >= COT_MIN_SENTENCES


REPETITION_N = 4
"""Word n-gram length of :func:`repetition`."""


def repetition(response: str, n: int = REPETITION_N) -> float:
    """A degeneration measure: the share of a response's word n-grams that repeat an n-gram earlier in it.

    ``(count - distinct) / count`` over the whitespace-separated words' n-grams (lower-cased): 0 for a response
    that never repeats itself (or has fewer than ``n`` words), near 1 for one stuck in a loop. A CoT answer that
    restates a quantity repeats a few 4-grams; a looping one repeats most of them.
    """
    words = response.lower().split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0
