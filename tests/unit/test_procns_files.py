"""procns.files' JSON reader: nesting bounded before json.loads runs (pure logic)."""

from __future__ import annotations

import json

import pytest

from procns.files import loads_json


@pytest.mark.parametrize("text", [
    "[" * 16 + "]" * 16,
    json.dumps({"a": "[" * 40, "b": ["\\\"[[[[", {"c": [1]}]}),  # brackets in strings
    json.dumps([["\\", "[[[[[[[[[[[[[[[[[[[[[["]]),  # an escaped backslash ends no string
])
def test_brackets_in_strings_do_not_count(text):
    assert loads_json(text, "m", depth=16) == json.loads(text)


@pytest.mark.parametrize("text", [
    "[" * 17 + "]" * 17,
    json.dumps({"a": "x"})[:-1] + ", " + '"b": ' + "[" * 20 + "]" * 20 + "}",
])
def test_deeper_than_the_limit_is_refused_in_one_line(text):
    with pytest.raises(ValueError, match="nested deeper than 16"):
        loads_json(text, "m", depth=16)


def test_a_string_left_open_hides_what_follows_and_the_text_is_refused():
    with pytest.raises(ValueError, match="not valid JSON"):
        loads_json('["' + "[" * 40, "m", depth=16)
