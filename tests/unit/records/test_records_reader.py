"""read_records: content blobs (JSON arrays) and JSON lines in, records out; garbage rejected."""

from __future__ import annotations

import json

import orjson
import pytest

from function_app.records.reader import read_records

from ._samples import SAMPLES, record_files, require_samples

require_samples()


def test_json_array() -> None:
    assert read_records(b'[{"Id": "a"}, {"Id": "b"}]') == [{"Id": "a"}, {"Id": "b"}]
    assert read_records(b"  \n[]\n") == []


def test_json_lines_with_blank_lines_and_crlf() -> None:
    data = b'{"Id": "a"}\r\n\r\n   \n{"Id": "b"}\n'
    assert read_records(data) == [{"Id": "a"}, {"Id": "b"}]


def test_single_pretty_printed_object_and_bom() -> None:
    assert read_records(b'{\n  "Id": "a"\n}\n') == [{"Id": "a"}]
    assert read_records(b'\xef\xbb\xbf[{"Id": "a"}]') == [{"Id": "a"}]
    assert read_records(b'\xef\xbb\xbf{"Id": "a"}\n{"Id": "b"}') == [{"Id": "a"}, {"Id": "b"}]


def test_empty_input() -> None:
    assert read_records(b"") == []
    assert read_records(b"\n \n") == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"garbage", "line 1 is not valid JSON"),
        (b'{"Id": "a"}\n{"Id": \n', "line 2 is not valid JSON"),
        (b'{"Id": "a"}\n\n{oops}\n', "line 3 is not valid JSON"),
        (b'[{"Id": "a"},\n {"Id": ', "line 2 column"),
        (b'[{"Id": "a"}] trailing', "line 1 column 15"),
        (b"\xff\xfe{}", "line 1 is not valid JSON"),
    ],
)
def test_garbage_is_rejected_with_its_position(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_records(data)


def test_array_error_names_the_byte_offset() -> None:
    with pytest.raises(ValueError, match=r"offset \d+"):
        read_records(b'[{"Id": "a"}, nope]')


@pytest.mark.parametrize("name", [f for f in record_files() if not f.endswith(".json")])
def test_sample_json_lines_files(name: str) -> None:
    data = (SAMPLES / name).read_bytes()
    expected = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
    assert read_records(data) == expected
    # The same records as a content blob.
    assert read_records(orjson.dumps(expected)) == expected
