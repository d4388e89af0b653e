"""The scrubber's index of a text (``spec._compact``): the same as a character-by-character reading, in
a few bytes a character (a list of Python ints took 46, for text a kernel may make megabytes long)."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from grading_helpers import ROOT
from qkv_grading.spec import HIDDEN_REMOVED, _compact, load_spec


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec=None), max_size=60) | st.text(" \t\n\u3000\u2028ab", max_size=30))
def test_compact_reads_as_str_isspace_does(text):
    compact, where = _compact(text)
    kept = [k for k, c in enumerate(text) if not c.isspace()]
    assert compact == "".join(text[k] for k in kept)
    assert list(where) == kept


def test_compact_takes_a_few_bytes_a_character():
    text = "abc def\n" * 250_000  # 2 MB
    tracemalloc.start()
    _compact(text)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak / len(text) < 20, peak / len(text)


def test_the_scrubber_still_removes_a_hidden_line_spread_over_whitespace():
    spec = load_spec(ROOT, "01_weighted_average")
    line = spec.scrub.lines[0]
    spaced = "before " + "  ".join(line[k:k + 3] for k in range(0, len(line), 3)) + " after"
    assert spec.scrub(spaced) == f"before {HIDDEN_REMOVED} after"
