"""The tables' JSON codec: keys byte for byte as before, values on orjson, nothing read wrong."""

from __future__ import annotations

import json
from typing import Any

import pytest
from faust.serializers import codecs
from hypothesis import given
from hypothesis import strategies as st

from stream_processors.patches import json_codec
from stream_processors.patches.json_codec import TableJson, install, stdlib_dumps
from tests.support.reconcile import Harness

CODEC = TableJson()

# Keys as payment ids, merchant|currency and item keys can be: ASCII, accented, CJK, emoji
# (outside the BMP: a surrogate pair in the standard library's escapes), quotes, controls.
KEYS = ["pay-0001", "m-1|CNY", "paiement-é", "支付-42", "pay-🙂", 'a"b\\c', "tab\there\n",
        "\x00tick-outbox/3", ""]


@pytest.mark.parametrize("key", KEYS)
def test_keys_keep_the_bytes_faust_wrote_before(key: str) -> None:
    # The bytes are the key's identity in rocksdb, in log compaction and in partitioning.
    assert CODEC.dumps(key) == json.dumps(key).encode() == stdlib_dumps(key)
    assert CODEC.loads(CODEC.dumps(key)) == key


@given(st.text())
def test_any_text_key_is_written_as_the_standard_library_writes_it(key: str) -> None:
    assert CODEC.dumps(key) == json.dumps(key).encode()
    assert CODEC.loads(CODEC.dumps(key)) == key


def _reconcile_states() -> list[Any]:
    h = Harness()
    h.routed("pay-é")
    h.confirm("c-1", "pay-é")
    h.routed("p-2", channel="card")
    return list(h.store.values())


def test_values_are_written_by_orjson_and_read_back_equal() -> None:
    for value in _reconcile_states():
        raw = CODEC.dumps(value)
        assert b": " not in raw and b", " not in raw  # orjson's compact form, not stdlib's
        assert CODEC.loads(raw) == value
        assert json.loads(raw) == value  # any JSON reader still reads it


def test_values_written_in_the_old_format_read_the_same() -> None:
    # Changelogs and rocksdb stores written before this codec: stdlib's spaces and escapes.
    for value in _reconcile_states():
        old = stdlib_dumps(value)
        assert b"\\u00e9" in old or b"p-2" in old
        assert CODEC.loads(old) == value


def test_a_recovered_store_drives_the_processor_as_before() -> None:
    # The table's contents replaced by their trip through the codec (a changelog recovery):
    # the processor decides the same.
    h = Harness()
    h.routed("pay-é")
    copied = {CODEC.loads(CODEC.dumps(k)): CODEC.loads(CODEC.dumps(v)) for k, v in h.store.items()}
    assert copied == h.store
    h.store.clear()
    h.store.update(copied)
    h.proc.forget_partitions()
    d = h.confirm("c-1", "pay-é")
    [result] = h.results(d)
    assert result["outcome"] == "MATCHED" and result["payment_id"] == "pay-é"


@pytest.mark.parametrize("big", [2**63, 2**64, 2**70, -(2**63) - 1, 10**30])
def test_integers_past_64_bits_round_trip_exactly(big: int) -> None:
    # orjson refuses to write them and reads them as floats: the codec must do neither.
    value = {"gross_minor": big, "count": 3}
    raw = CODEC.dumps(value)
    back = CODEC.loads(raw)
    assert back == value and isinstance(back["gross_minor"], int)
    assert CODEC.loads(stdlib_dumps(value)) == value  # written before, read now


def test_int64_edges_and_long_digit_strings_read_exactly() -> None:
    value = {"max": 2**63 - 1, "min": -(2**63), "id": "1234567890123456789012", "ms": 1764000000000}
    for raw in (CODEC.dumps(value), stdlib_dumps(value)):
        back = CODEC.loads(raw)
        assert back == value
        assert all(type(back[k]) is type(value[k]) for k in value)


def test_what_only_the_standard_library_reads_is_still_read() -> None:
    assert CODEC.loads(b"[NaN, 1]")[1] == 1
    assert CODEC.loads('{"a": 1}') == {"a": 1}  # a str, as faust may hand over


def test_types_faust_encoded_through_its_default_still_encode() -> None:
    value = {"ids": {"b"}, "t": ("x", 1)}
    assert CODEC.loads(CODEC.dumps(value)) == {"ids": ["b"], "t": ["x", 1]}


def test_install_makes_it_faust_json_codec_and_is_idempotent() -> None:
    install()
    install()
    assert isinstance(codecs.get_codec("json"), TableJson)
    assert codecs.dumps("json", "pay-é") == b'"pay-\\u00e9"'
    assert codecs.dumps("json", {"a": 1}) == b'{"a":1}'
    assert json_codec.NAME == "json"
