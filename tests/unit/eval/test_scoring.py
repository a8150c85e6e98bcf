"""Answer extraction, scoring, CoT-style detection and statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lens_steer.data.registry import Example
from lens_steer.eval.scoring import (
    ItemScore,
    canonical_number,
    extract_choice,
    extract_number,
    extract_text_answer,
    is_cot_style,
    repetition,
    score,
)
from lens_steer.eval.stats import accuracy_ci, mcnemar_exact

CHOICES = ("red", "blue", "green", "yellow")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("27", "27"),
        ("1,234", "1234"),
        ("$1,234.", "1234"),
        ("-5", "-5"),
        ("−5", "-5"),
        ("3.50", "3.5"),
        ("7.0", "7"),
        ("+8", "8"),
        (".5", "0.5"),
        ("-0", "0"),
        ("abc", None),
        ("", None),
    ],
)
def test_canonical_number(text: str, expected: str | None) -> None:
    assert canonical_number(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is $1,234.", "1234"),
        ("#### -5", "-5"),
        ("3 + 4 = 7, so 7 apples. The answer is 7.", "7"),
        ("She pays 2 * 3 = 6 dollars.\n#### 6\nThat took 10 minutes.", "6"),
        ("#### 1,000,000", "1000000"),
        ("So the final answer is: 18 eggs. We double-checked with 3 other methods.", "18"),
        ("Answer: 42\nExplanation: 6 * 7 = 42, also 43 is prime", "42"),
        ("The answer is 10 - 3 = 7 apples.", "7"),
        ("We get \\boxed{12}. Check: 12 / 4 = 3.", "12"),
        ("First 5, then 8, finally 13.", "13"),
        ("It costs 3.50 dollars.", "3.5"),
        ("The answer is $3.50.", "3.5"),
        ("He owes -12 dollars.", "-12"),
        ("The result is 5-3 which is 2", "2"),
        ("The answer is forty-two.", None),
        ("I don't know.", None),
        ("", None),
        ("The answer is 7. Wait, no: the answer is 8.", "8"),
    ],
)
def test_extract_number(response: str, expected: str | None) -> None:
    assert extract_number(response) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is (B).", "B"),
        ("Answer: B", "B"),
        ("B.", "B"),
        ("**B**", "B"),
        ("(B)", "B"),
        ("Let me think.\nC\n", "C"),
        ("A train leaves at 3pm... Answer: C", "C"),
        ("A train leaves at 3pm and arrives at 5pm.", None),
        ("I think it is A is wrong and so on", None),
        ("A. red", "A"),
        ("The answer is A because red is warm.", "A"),
        ("Option D is correct.", "D"),
        ("D is the correct answer.", "D"),
        ("The correct answer is option (C).", "C"),
        ("answer is: option (c)", "C"),
        ("(A) is wrong and (C) is right, so the answer is **(D)**.", "D"),
        ("(A) is wrong, and (C) fits better.", "C"),
        ("The answer is (B). Wait, actually the answer is (D).", "D"),
        ("The sky is blue on a clear day.", "B"),
        ("Not red, not green; it is yellow.", "D"),
        ("The answer is E.", None),  # only four choices
        ("Therefore, the correct answer is:\n\\boxed{C}", "C"),  # Qwen2.5's way of stating a choice
        ("so x = \\(\\boxed{7115}\\). The correct choice is \\(\\boxed{D}\\).", "D"),
        ("\\boxed{\\text{B}}", "B"),
        ("\\boxed{A) red}", "A"),
        ("The total is \\boxed{42}.", None),  # a boxed number is no letter
        ("\\boxed{E}", None),
        ("I have no idea.", None),
        ("", None),
    ],
)
def test_extract_choice(response: str, expected: str | None) -> None:
    assert extract_choice(response, CHOICES) == expected


def test_extract_choice_without_choices_allows_a_to_e() -> None:
    assert extract_choice("The answer is E.", ()) == "E"
    assert extract_choice("The answer is F.", ()) is None


def test_extract_choice_prefers_longer_choice_text_on_tie() -> None:
    assert extract_choice("It is the dark blue one", ("blue", "dark blue")) == "B"


def test_extract_text_answer() -> None:
    assert extract_text_answer("Thinking...\nThe answer is: the lion king.") == "the lion king."
    assert extract_text_answer("line one\n\nfinal line\n") == "final line"
    assert extract_text_answer("   ") is None


def test_score_gsm8k() -> None:
    ex = Example("gsm8k/test/0", "gsm8k", "q", "1334")
    assert score(ex, "So $1,334.") == ItemScore("1334", True, True)
    assert score(ex, "The answer is 1,333.") == ItemScore("1333", False, True)
    assert score(ex, "no idea") == ItemScore(None, False, False)
    assert score(Example("g", "gsm8k", "q", "3.50"), "#### 3.5").correct


def test_score_multiple_choice() -> None:
    ex = Example("mmlu/test/x/0", "mmlu", "q", "B", CHOICES, "x")
    assert score(ex, "The answer is (B).") == ItemScore("B", True, True)
    assert score(ex, "Answer: C") == ItemScore("C", False, True)
    unparsed = score(ex, "Hmm.")
    assert unparsed == ItemScore(None, False, False)


def test_score_generative_text_and_numeric() -> None:
    ex = Example("bbl/t/0", "bbl", "Which film? 🦁👑", "the lion king")
    assert score(ex, "Let me see.\nThe Lion King.").correct
    assert score(ex, "The answer is: **The Lion  King**").correct
    assert not score(ex, "Jaws").correct
    assert score(ex, "").parsed is False
    numeric = Example("bbl/operators/0", "bbl", "op 17", "17")
    assert score(numeric, "op 17 gives 17.").correct


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("The answer is 7.", False),
        ("7", False),
        ("B", False),
        ("3 + 4 = 7, so 7 apples. The answer is 7.", True),
        ("Step 1: add the apples. The answer is 7.", True),
        ("First, Tom has 3 boxes. So the answer is 12.", True),
        ("Tom has 3 boxes of 4 pens. He has twelve pens in total. The answer is 12.", True),
        ("Paris is the capital of France. So the answer is B.", False),
        ("B. Paris is the capital of France, and it is a large city. It has many museums. So it is B.", False),
        ("18\nJanet has 16 eggs, eats 3 and bakes 4, leaving 9 eggs. 9 * 2 = 18 dollars.", False),
        ("(C) because the moon reflects light. It does not glow. The answer is C.", False),
        (
            "A train leaves at 3pm. It travels for two hours at constant speed. "
            "It therefore arrives at 5pm. Answer: C",
            True,
        ),
        ("1. Count the eggs\n2. Subtract the eaten ones\n#### 9", True),
        ("Answer: 12. Because 3 boxes of 4 pens make twelve pens, which we verify twice over.", False),
        (" ".join(["word"] * 30), True),
        ("Short text without any answer.", False),
    ],
)
def test_is_cot_style(response: str, expected: bool) -> None:
    assert is_cot_style(response) is expected


def test_accuracy_ci_basic_and_deterministic() -> None:
    correct = [True] * 70 + [False] * 30
    acc, lo, hi = accuracy_ci(correct, seed=1)
    assert acc == pytest.approx(0.7)
    assert lo < acc < hi
    assert (acc, lo, hi) == accuracy_ci(correct, seed=1)
    half_width = 1.96 * math.sqrt(0.7 * 0.3 / 100)
    assert hi - lo == pytest.approx(2 * half_width, rel=0.15)
    assert accuracy_ci([True] * 5) == (1.0, 1.0, 1.0)
    assert accuracy_ci([False] * 5) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        accuracy_ci([])


def test_accuracy_ci_matches_index_resampling() -> None:
    rng = np.random.default_rng(0)
    correct = rng.random(200) < 0.4
    _, lo, hi = accuracy_ci(correct, n_boot=4000, seed=0)
    means = correct[rng.integers(0, 200, size=(4000, 200))].mean(axis=1)
    ref_lo, ref_hi = np.percentile(means, [2.5, 97.5])
    assert lo == pytest.approx(ref_lo, abs=0.015) and hi == pytest.approx(ref_hi, abs=0.015)


def test_mcnemar_exact() -> None:
    same = [True, False, True]
    assert mcnemar_exact(same, same) == 1.0
    a = [False] * 5
    b = [True] * 5
    assert mcnemar_exact(a, b) == pytest.approx(2 / 32)
    a = [True] + [False] * 9 + [True] * 4
    b = [False] + [True] * 9 + [True] * 4
    assert mcnemar_exact(a, b) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(a, b) == mcnemar_exact(b, a)
    assert mcnemar_exact([True, False], [False, True]) == 1.0  # capped
    big_a = [True] * 600 + [False] * 400
    big_b = [False] * 600 + [True] * 400
    assert 0.0 < mcnemar_exact(big_a, big_b) < 1e-9
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])


@pytest.mark.parametrize(("response", "expected"), [
    ("", 0.0),
    ("one two three", 0.0),  # fewer words than the n-gram
    ("a b c d e f g", 0.0),  # no 4-gram twice
    ("a b c d a b c d", 1 / 5),  # 5 four-grams, "a b c d" twice
    ("Loop loop loop loop loop loop", 2 / 3),  # 3 four-grams, all the same: 2 repeat the first
    ("A B C D a b c d", 1 / 5),  # case-insensitive
])
def test_repetition(response: str, expected: float) -> None:
    assert repetition(response) == pytest.approx(expected)
    assert repetition("x y x y x y", n=2) == pytest.approx(3 / 5)
