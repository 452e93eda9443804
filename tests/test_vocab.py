"""The vocabulary: sorted chars, unknown chars named, encode and decode round trip."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charjax.errors import CharjaxError
from charjax.vocab import Vocab


def test_vocab_sorted_and_unknown_chars():
    vocab = Vocab.from_text("banana!")
    assert vocab.chars == "!abn"
    assert vocab.encode("nab").tolist() == [3, 1, 2]
    assert vocab.unknown("cab?") == "?c"
    with pytest.raises(CharjaxError, match="'\\?c'"):
        vocab.encode("cab?")


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_encode_decode_round_trip(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.shape == (len(text),) and ids.max() < vocab.size
    assert vocab.decode(ids) == text
