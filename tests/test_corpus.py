import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from charlstm.base.errors import CorpusError, UnknownCharactersError
from charlstm.data.corpus import Corpus, TextOptions, Vocab, decode_bytes, read_text
from charlstm.data.sources import read_corpus


@pytest.mark.parametrize(
    "text",
    ["Hello, world!\nSecond line.", "Война и мир — роман Толстого.", "emoji 🙂 and 𠀋𡈽 outside the BMP"],
)
def test_encode_then_decode_gives_the_text_back(text):
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_round_trip_holds_for_any_text(text):
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert Vocab(vocab.chars) == vocab


def test_vocabulary_is_the_sorted_set_of_code_points():
    assert Vocab.from_text("banana").chars == ["a", "b", "n"]


def test_ids_are_stored_in_the_narrowest_type():
    assert Vocab.from_text("abc").encode("abc").dtype == np.uint8
    wide = "".join(chr(0x4E00 + i) for i in range(300))
    assert Vocab.from_text(wide).encode(wide).dtype == np.uint16


def test_unknown_characters_are_named_or_handled():
    vocab = Vocab.from_text("abc ")
    with pytest.raises(UnknownCharactersError) as raised:
        vocab.encode("abXcY")
    assert raised.value.unknown == ["X", "Y"]
    assert vocab.decode(vocab.encode("abXc", unknown="skip")) == "abc"
    assert vocab.decode(vocab.encode("abXc", unknown="replace")) == "ab c"


def test_bom_is_dropped_and_crlf_becomes_lf():
    data = "\ufeffline one\r\nline two\r\n".encode("utf-8")
    assert decode_bytes(data, "x") == "line one\nline two\n"
    assert decode_bytes(data, "x", TextOptions(keep_crlf=True)) == "line one\r\nline two\r\n"


def test_invalid_utf8_names_the_byte_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good text \xff more")
    with pytest.raises(CorpusError, match="offset 10"):
        read_text(path)
    assert read_text(path, TextOptions(errors="replace")) == "good text \ufffd more"


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "empty"), (b"  \n\t\n", "whitespace"), (b"ab\x00cd", "binary")],
)
def test_unusable_files_are_refused(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_text(path)


def test_missing_file_and_directory_are_refused(tmp_path):
    with pytest.raises(CorpusError, match="does not exist; give the path of a text file"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="directory"):
        read_text(tmp_path)


def test_validation_split_is_the_contiguous_tail():
    corpus = Corpus.from_text("abcdefghij" * 10)
    train, val = corpus.split(0.1)
    assert len(val) == 10 and len(train) == 90
    assert corpus.vocab.decode(val) == "abcdefghij"
    assert np.array_equal(np.concatenate([train, val]), corpus.ids)


def test_default_corpus_is_python_source():
    corpus = read_corpus(None)
    assert len(corpus) > 100_000
    assert "def " in corpus.vocab.decode(corpus.ids[:5000])


import charlstm.data.corpus as corpus_module
from charlstm.data.corpus import UNKNOWN_CHAR, char_counts, prepare_text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=60))
def test_chunked_encoding_matches_across_chunk_boundaries(text):
    whole = Vocab.from_text(text)
    original = corpus_module._CHUNK
    corpus_module._CHUNK = 7
    try:
        chunked = Vocab.from_text(text)
        ids = chunked.encode(text)
    finally:
        corpus_module._CHUNK = original
    assert chunked == whole
    assert np.array_equal(ids, whole.encode(text))


def test_ascii_bytes_latin1_and_wide_text_take_equal_paths():
    for text in ["plain ascii\n", "café à la crème\n", "東京 and ascii 🙂\n"]:
        vocab = Vocab.from_text(text)
        assert vocab.decode(vocab.encode(text)) == text
    assert np.array_equal(Vocab.from_text(b"abc ab").encode(b"abc ab"), Vocab.from_text("abc ab").encode("abc ab"))


def test_char_counts_count_every_code_point():
    counts = char_counts("aab🙂")
    assert counts[ord("a")] == 2 and counts[ord("b")] == 1 and counts[ord("🙂")] == 1 and counts.sum() == 4


def test_rare_characters_fold_into_the_unknown_symbol():
    corpus = Corpus.from_text("aaaa bbbb x y", min_char_count=2)
    assert corpus.vocab.chars == [" ", "a", "b", UNKNOWN_CHAR]
    assert corpus.vocab.decode(corpus.ids) == f"aaaa bbbb {UNKNOWN_CHAR} {UNKNOWN_CHAR}"
    assert corpus.vocab.default_replacement == UNKNOWN_CHAR


def test_nfc_composes_and_can_be_switched_off():
    decomposed = "cafe\u0301".encode("utf-8")
    assert prepare_text(decomposed, "x") == "café"
    assert prepare_text(decomposed, "x", TextOptions(nfc=False)) == "cafe\u0301"


def test_lowercase_and_lone_carriage_returns():
    assert prepare_text(b"Hello\r\nWorld\rX", "x", TextOptions(lowercase=True)) == b"hello\nworld\rx"
    assert prepare_text("Élan\r\n".encode(), "x", TextOptions(lowercase=True)) == "élan\n"
