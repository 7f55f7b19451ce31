"""Answer extraction from a final node's free text: a table of formats models really write."""

import pytest

from neuromas.runtime.generation.answers import canonical_number, extract_answer, normalize_text, parse_number

NUMBER_CASES = [
    ("42", "42"),
    ("The answer is 42.", "42"),
    ("The answer is 1,234.", "1234"),
    ("Total: 1,234,567 apples", "1234567"),
    ("So we get \\boxed{17}", "17"),
    ("\\boxed{\\frac{1}{2}} hmm \\boxed{3}", "3"),
    ("#### 72", "72"),
    ("She has 5 apples and buys 3 more, so 8 apples.", "8"),
    ("The answer is 12 apples, not 10.", "12"),
    ("Answer: -7", "-7"),
    ("answer: \u22123", "-3"),
    ("The final answer is $18.", "18"),
    ("It costs $1,000.50 in total", "1000.5"),
    ("Answer: 3.50", "3.5"),
    ("the answer is 0.25", "0.25"),
    ("Answer: .5", "0.5"),
    ("Answer: 3/4", "3/4"),
    ("Answer: 6/3", "2"),
    ("The answer is **56**.", "56"),
    ("Final answer: 50%", "50"),
    ("1e3 is the answer? no, the answer is 7", "7"),
    ("x = 3, y = 4, so x + y = 7", "7"),
    ("step 1: 2 + 2\nstep 2: 4 * 3\n= 12", "12"),
    ("The answer is: +9", "9"),
    ("no digits here", None),
    ("", None),
    ("Answer: 12abc 5", "5"),
]


@pytest.mark.parametrize("text, expected", NUMBER_CASES)
def test_number_extraction(text, expected):
    assert extract_answer(text, "number") == expected


CHOICE_CASES = [
    ("B", "B"),
    ("(C)", "C"),
    ("D.", "D"),
    ("**A**", "A"),
    ("The answer is (B).", "B"),
    ("The answer is C", "C"),
    ("Answer: d", "D"),
    ("Answer: (E) the fifth one", "E"),
    ("I think the correct option is B because it fits.", "B"),
    ("Options (A) and (C) are close, but (C) wins.", "C"),
    ("A cat sat on the mat. Final answer: B", "B"),
    ("Let me think.\nB)", "B"),
    ("\\boxed{A}", "A"),
    ("A dog barked", None),
    ("The answer is unclear", None),
]


@pytest.mark.parametrize("text, expected", CHOICE_CASES)
def test_choice_extraction(text, expected):
    assert extract_answer(text, "choice") == expected


TEXT_CASES = [
    ("Paris", "Paris"),
    ("The answer is Paris.", "Paris"),
    ("Let me think.\nThe capital is far away.\nParis", "Paris"),
    ("Final answer: **blue whale**", "blue whale"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
    ('The answer is "yes".', "yes"),
    ("#### seven", "seven"),
    ("I will answer now. The answer is Rome", "Rome"),
    ("   \n  ", None),
    ("Unfinished \\boxed{12", "Unfinished \\boxed{12"),
]


@pytest.mark.parametrize("text, expected", TEXT_CASES)
def test_text_extraction(text, expected):
    assert extract_answer(text) == expected
    assert extract_answer(text, "text") == expected


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="number"):
        extract_answer("4", "float")


@pytest.mark.parametrize(
    "token, value",
    [("1,234", 1234.0), ("$5", 5.0), ("-0.5", -0.5), ("12.", 12.0), ("nan", None), ("inf", None), ("abc", None),
     ("1/0", None)],
)
def test_parse_number(token, value):
    assert parse_number(token) == value


def test_canonical_number_and_normalize_text():
    assert canonical_number("+1,000.0") == "1000"
    assert canonical_number("2/4") == "1/2"
    assert normalize_text("  The **Blue**  Whale. ") == "the blue whale"
    assert normalize_text("1,234 apples.") == "1234 apples"
