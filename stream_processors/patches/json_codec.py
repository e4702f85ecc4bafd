"""faust's "json" codec on orjson, with the bytes of every key exactly as before.

Every faust table here (validate's seen payments, reconcile's states, settle's batches) is
serialized with faust's "json" codec, keys and values alike (faust picks it for a table whose
key and value types are not models, whatever the app's serializers say). Its stock codec runs
the standard library's encoder with faust's encoder class, a fresh encoder object per call:
about 9 µs for a reconcile state of 1 KB and 15 % of the reconcile worker's samples under
py-spy. orjson does the same in about 1.5 µs (docs/performance.md).

faust would pick orjson up by itself once it is installed, for keys too. That would change
the bytes of any key that is not plain ASCII: the standard library writes ``"\\u00e9"``,
orjson the UTF-8 bytes. A key's bytes are its identity: a rocksdb store looks a key up by
them, log compaction keeps the newest record per key bytes (an old value under the old bytes
would outlive its tombstone and come back on recovery), and a json-keyed topic hashes them
to a partition. So this codec keeps the standard library for ``str`` (every table key here),
byte for byte what faust wrote before, and uses orjson for everything else (values, whose
bytes are nobody's identity). Anything orjson refuses (an int past 64 bits) is written by the
standard library as before. Reading: orjson parses an integer past 64 bits as a float, without
a word, so a text with a run of 19 or more digits (anything from 10^18 up, and a hex string
now and then) is read by the standard library, exactly; so is anything orjson refuses (NaN).
Every value written by either, before or after, reads back the same.

Upstream: faust's "json" codec (``faust.serializers.codecs.json`` on ``faust.utils.json``,
which switches to orjson whenever orjson is importable) is replaced in faust's codec registry
(``codecs.register``). No upstream issue: a cost, and the key bytes an orjson switch would
change.

Proved by tests/unit/stream_processors/test_json_codec.py (keys byte for byte as the standard
library wrote
them, any text key, values on orjson, values of the old format, integers past 64 bits, a
recovered store driving the processor as before) and on the real broker by
tests/integration/test_reconcile_stage.py (a non-ASCII payment id's changelog key).
"""

from __future__ import annotations

import json as stdlib_json
from typing import Any, Final

import orjson
from faust.serializers import codecs
from faust.utils.json import JSONEncoder, on_default

UPSTREAM: Final = (
    # replaced in the codec registry:
    "faust.serializers.codecs:json",
    "faust.serializers.codecs:register",
    "faust.serializers.codecs:get_codec",
    # what the replacement writes with (the format before it):
    "faust.utils.json:JSONEncoder",
    "faust.utils.json:on_default",
)

NAME: Final = "json"
# Datetimes and dataclasses go to faust's `on_default` as they did with the standard
# library's encoder, instead of orjson's own rendering of them.
_OPTIONS: Final = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)
# Every digit to "0", everything else to "x": a run of 19 zeros is a run of 19 digits.
_DIGITS: Final = bytes(0x30 if 0x30 <= i <= 0x39 else 0x78 for i in range(256))
_LONG_RUN: Final = b"0" * 19
# One encoder for every call: faust's stock codec built a new one each time.
_STDLIB: Final = JSONEncoder()


def stdlib_dumps(obj: Any) -> bytes:
    """What faust's stock codec writes without orjson (the format before this module)."""
    return _STDLIB.encode(obj).encode()


class TableJson(codecs.Codec):
    """faust's json codec: keys (str) as the standard library writes them, the rest orjson."""

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, str):
            return stdlib_dumps(obj)
        try:
            return orjson.dumps(obj, default=on_default, option=_OPTIONS)
        except orjson.JSONEncodeError:  # e.g. an int beyond 64 bits, which the stdlib writes
            return stdlib_dumps(obj)

    def _loads(self, s: bytes) -> Any:
        if isinstance(s, str):
            s = s.encode()
        if _LONG_RUN in s.translate(_DIGITS):  # maybe an int orjson would turn into a float
            return stdlib_json.loads(s)
        try:
            return orjson.loads(s)
        except orjson.JSONDecodeError:  # e.g. NaN, which the standard library reads
            return stdlib_json.loads(s)


def install() -> None:
    """Make faust's "json" codec this one (idempotent); before any table is read or written."""
    codecs.get_codec(NAME)  # loads faust's codec extensions first, so none replaces ours later
    if not isinstance(codecs.codecs.get(NAME), TableJson):
        codecs.register(NAME, TableJson())
