"""Hypothesis strategies for hostile content-blob bodies (see ``test_fuzz_record_path``).

A body is built as bytes, element by element, so tokens that no JSON serialiser writes (lone
UTF-16 surrogate escapes, ``NaN``, ``1e400``, bytes that are not UTF-8, duplicate keys) can sit
inside an otherwise valid array. Every element's text is balanced: brackets and quotes close
within it and it has no comma at its own top level, so the array structure stays intact.

Realistic records carry ``ID_MARK`` in their Id; ``Body.render`` replaces it with a prefix, so
examples written to one lake get fresh keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

ID_MARK = b"@P@"
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Body:
    """A JSON array body: its element texts, the whitespace around them, and an optional BOM."""

    elements: tuple[bytes, ...]
    gaps: tuple[bytes, ...] = ()
    bom: bool = False

    def render(self, prefix: bytes = b"fuzz") -> tuple[bytes, list[tuple[int, int]], list[bytes]]:
        """The body bytes, each element's (start, end) byte offsets in it, and the element texts."""
        out = bytearray(BOM if self.bom else b"")
        out += b"["
        spans: list[tuple[int, int]] = []
        texts: list[bytes] = []
        for i, element in enumerate(self.elements):
            gap = self.gaps[i % len(self.gaps)] if self.gaps else b""
            if i:
                out += b","
            out += gap
            text = element.replace(ID_MARK, prefix)
            spans.append((len(out), len(out) + len(text)))
            texts.append(text)
            out += text
            out += gap
        out += b"]"
        return bytes(out), spans, texts


def dumps(value: object) -> bytes:
    return orjson.dumps(value)


def obj(pairs: list[tuple[bytes, bytes]]) -> bytes:
    """An object from (key text, value text) pairs; keys may repeat (duplicate keys)."""
    return b"{" + b",".join(k + b":" + v for k, v in pairs) + b"}"


def arr(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


# -- leaves ---------------------------------------------------------------------------------

ODD_NUMBERS = [
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1E+400", b"1e-400", b"-0", b"-0.0", b"0e0",
    b"18446744073709551616", b"-9223372036854775809", b"9223372036854775807", b"1" + b"0" * 40,
    b"123456789012345678901234567890.5e10", b"4.9e-324", b"1.7976931348623157e308", b"1" + b"9" * 400,
]
big_ints = st.integers(min_value=2**64, max_value=2**300).map(lambda n: str(n).encode())
neg_big_ints = st.integers(min_value=-(2**300), max_value=-(2**63) - 1).map(lambda n: str(n).encode())
odd_numbers = st.one_of(st.sampled_from(ODD_NUMBERS), big_ints, neg_big_ints)

# Pieces of a string's content as they stand in the JSON text.
BAD_STRING_PIECES = [
    b"\\ud83d", b"\\udc00", b"\\ud83d\\ud83d", b"\\udfff\\ud800", b"\\ud83d\\ude00",  # the last is a valid pair
    b"\xff", b"\xfe\xff", b"\xc3", b"\x80abc", b"\xed\xa0\x80", b"\xf0\x9f\x98", b"\xc0\xaf",
]
plain_pieces = st.text(max_size=8).map(lambda s: orjson.dumps(s)[1:-1])
bracket_pieces = st.integers(min_value=1, max_value=300).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b"{" * n, b"[" * n, b"}" * n + b"]" * n, b'{\\"a\\":' * n]))
string_pieces = st.one_of(st.sampled_from(BAD_STRING_PIECES), plain_pieces, bracket_pieces)
hostile_strings = st.lists(string_pieces, min_size=1, max_size=4).map(lambda ps: b'"' + b"".join(ps) + b'"')

# JSON text a record holds inside a string (Parameters values, ModifiedProperties values).
JSON_TEXTS = [
    "[]", "{}", '[{"a": 1}]', '{"x": [1, 2', "[1, 2...", "  [true]", "[EXTERNAL] hello", '{"a": NaN}',
    '["\\ud83d"]', '{"\\udc00": 1}', "[1e400]", "[18446744073709551616]", '{"a": 1, "a": 2}',
    '[{"Name": "x", "Value": "[{\\"Name\\": \\"y\\", \\"Value\\": \\"[]\\"}]"}]', "-Identity \"x\" -Force",
    '{"Rules": [{"Name": "r", "Actions": ["Forward"]}]}', "{", "[", "]", "}{", "[[]",
]
json_texts = st.one_of(
    st.sampled_from(JSON_TEXTS),
    st.integers(min_value=1, max_value=400).flatmap(lambda n: st.sampled_from(
        ["[" * n + "]" * n, "{" * n, "[" * n, '{"a":' * n + "1" + "}" * n, "[" * n + "]" * (n - 1)])),
)
json_text_strings = json_texts.map(dumps)

plain_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
).map(dumps)

# Tokens no parser reads; each is balanced and holds no comma, quote or bracket of its own.
UNREADABLE_TOKENS = [b"undefined", b"True", b"None", b"'single'", b"+1", b"01", b"0x1F", b".5", b"1.", b"--1",
                     b"nan", b"inf", b'"a\x00b"', b'"tab\there"', b'"new\nline"', b'"\\x41"', b"tru"]
unreadable_tokens = st.sampled_from(UNREADABLE_TOKENS)


@st.composite
def huge_strings(draw: st.DrawFn) -> bytes:
    """A string of a few MB (sparingly: these are slow everywhere)."""
    size = draw(st.integers(min_value=2, max_value=3)) << 20
    kind = draw(st.sampled_from(["A", "[]", "{", "bad"]))
    if kind == "A":
        return b'"' + b"A" * size + b'"'
    if kind == "[]":
        return b'"' + b"[" * (size // 2) + b"]" * (size // 2) + b'"'
    if kind == "{":
        return b'"' + b"{" * size + b'"'
    return b'"' + b"x" * size + b"\\ud83d\xff" + b'"'


leaves = st.one_of(plain_scalars, odd_numbers, hostile_strings, json_text_strings)
# Hypothesis picks a branch of one_of about evenly: a token no parser reads is one leaf in sixteen.
rare_leaves = st.one_of(*([leaves] * 15), unreadable_tokens)

KEYS = ["Id", "id", "ID", "RecordType", "recordtype", "RECORDTYPE", "Operation", "operation", "OPERATION",
        "CreationTime", "creationtime", "UserId", "userid", "ClientIP", "clientip", "Workload", "Parameters",
        "parameters", "ModifiedProperties", "Name", "Value", "a", "b", ""]
keys = st.one_of(st.sampled_from(KEYS).map(dumps), st.text(max_size=6).map(dumps), hostile_strings)


@st.composite
def deep(draw: st.DrawFn, inner: st.SearchStrategy[bytes] = leaves) -> bytes:
    """Lists and objects 200-400 levels deep (orjson writes at most 254), often near 254."""
    n = draw(st.one_of(st.integers(min_value=200, max_value=400), st.integers(min_value=249, max_value=258)))
    core = draw(inner)
    shape = draw(st.sampled_from(["list", "object", "mixed"]))
    if shape == "list":
        return b"[" * n + core + b"]" * n
    if shape == "object":
        return b'{"a":' * n + core + b"}" * n
    half = n // 2
    return b'[{"k":' * half + core + b"}]" * half


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(children, max_size=4).map(arr),
        st.lists(st.tuples(keys, children), max_size=4).map(obj),
    )


values = st.recursive(rare_leaves, _containers, max_leaves=10)

# -- realistic records ----------------------------------------------------------------------

RECORD_TYPES = [1, 2, 3, 4, 6, 8, 14, 15, 18, 25, 28, 40, 50, 52, 64, 99999, -1, 0]
OPERATIONS = ["MailItemsAccessed", "UserLoggedIn", "New-InboxRule", "Set-Mailbox", "Add member to group.",
              "Update user.", "FileAccessed", "Send", "UserLoginFailed", "Set-InboxRule", ""]
CLIENT_IPS = ["10.0.0.1", "203.0.113.7", "[2001:db8::1]:443", "::ffff:1.2.3.4", "81.2.69.160:51234", "garbage",
              " 8.8.8.8 ", "", "fe80::1%eth0"]
USER_IDS = ["alice@contoso.com", "Not Available", "ServicePrincipal_1b2c", "NT AUTHORITY\\SYSTEM (w3wp.exe)",
            "S-1-5-21-1-2-3-1001", " bob@contoso.com ", "/o=ExchangeLabs/ou=x/cn=Recipients/cn=a"]
TIMES = ["2026-11-20T10:00:00", "2026-11-20T10:00:00Z", "2026-11-20T10:00:00.1234567", "not a time", "",
         "0001-01-01T00:00:00", "9999-12-31T23:59:59.9999999"]
ARRAY_NAMES = ["Identity", "Name", "From", "ForwardTo", "RedirectTo", "Included Updated Properties", "Actions", "x"]


def _odd_case(draw: st.DrawFn, key: str) -> str:
    return draw(st.sampled_from([key, key, key, key.lower(), key.upper()]))


@st.composite
def name_value_arrays(draw: st.DrawFn, field: str) -> bytes:
    """Parameters-style ``[{"Name": .., "Value": ..}]`` or ModifiedProperties-style
    ``[{"Name": .., "NewValue": .., "OldValue": ..}]`` with JSON-looking strings as values."""
    value_text = st.one_of(json_text_strings, json_text_strings, hostile_strings, values)
    entries = []
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        name = draw(st.one_of(st.sampled_from(ARRAY_NAMES).map(dumps), hostile_strings, plain_scalars))
        if field == "ModifiedProperties":
            entries.append(obj([(b'"Name"', name), (b'"NewValue"', draw(value_text)),
                                (b'"OldValue"', draw(value_text))]))
        else:
            entries.append(obj([(b'"Name"', name), (b'"Value"', draw(value_text))]))
    # Rare choices test a value other than 0: the simplest example (all zeros) is tried first.
    if draw(st.integers(min_value=0, max_value=9)) == 7:
        # the array delivered as a JSON string ("stringified")
        return dumps(arr(entries).decode("utf-8", "replace"))
    return arr(entries)


texts = st.one_of(st.sampled_from(["Inbox", "/Inbox/x", "<a@b.c>", "", "RgAAAA=="]).map(dumps), hostile_strings,
                  json_text_strings)


@st.composite
def folders(draw: st.DrawFn) -> bytes:
    """MailItemsAccessed ``Folders[].FolderItems[]`` (the MailItemAccess table's source)."""
    out = []
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        items = [obj([(b'"InternetMessageId"', draw(texts)), (b'"Id"', draw(texts)),
                      (b'"SizeInBytes"', draw(st.one_of(odd_numbers, plain_scalars)))])
                 for _ in range(draw(st.integers(min_value=0, max_value=2)))]
        out.append(obj([(b'"Id"', draw(texts)), (b'"Path"', draw(texts)), (b'"FolderItems"', arr(items))]))
    return arr(out)


@st.composite
def identities(draw: st.DrawFn) -> bytes:
    """Azure AD ``Actor`` / ``Target`` arrays of ``{"ID": .., "Type": ..}``."""
    return arr([obj([(b'"ID"', draw(texts)), (b'"Type"', draw(st.one_of(st.sampled_from([0, 2, 5]).map(dumps),
                                                                         odd_numbers)))])
                for _ in range(draw(st.integers(min_value=0, max_value=3)))])


@st.composite
def realistic_records(draw: st.DrawFn) -> bytes:
    """An audit record as the API delivers it, with hostile parts now and then."""
    pairs: list[tuple[bytes, bytes]] = []

    def field(name: str, value: bytes) -> None:
        pairs.append((dumps(_odd_case(draw, name)), value))

    n = draw(st.integers(min_value=0, max_value=10**6))
    id_kind = draw(st.sampled_from(["plain"] * 6 + ["missing", "empty", "number", "hostile"]))
    if id_kind == "plain":
        field("Id", b'"' + ID_MARK + b"-%d" % n + b'"')
    elif id_kind == "empty":
        field("Id", b'""')
    elif id_kind == "number":
        field("Id", draw(st.one_of(odd_numbers, plain_scalars)))
    elif id_kind == "hostile":
        field("Id", b'"' + ID_MARK + b"-" + draw(hostile_strings)[1:])
    field("RecordType", draw(st.one_of(st.sampled_from(RECORD_TYPES).map(dumps), st.sampled_from(RECORD_TYPES).map(
        lambda v: b'"%d"' % v), odd_numbers, plain_scalars)))
    field("Operation", draw(st.one_of(st.sampled_from(OPERATIONS).map(dumps), st.sampled_from(OPERATIONS).map(dumps),
                                      hostile_strings, plain_scalars)))
    field("CreationTime", draw(st.one_of(st.sampled_from(TIMES).map(dumps), hostile_strings)))
    if draw(st.booleans()):
        field("UserId", draw(st.one_of(st.sampled_from(USER_IDS).map(dumps), hostile_strings)))
    if draw(st.booleans()):
        field("ClientIP", draw(st.one_of(st.sampled_from(CLIENT_IPS).map(dumps), hostile_strings, plain_scalars)))
    if draw(st.booleans()):
        field("Workload", draw(st.one_of(st.sampled_from(["Exchange", "AzureActiveDirectory"]).map(dumps), values)))
    if draw(st.booleans()):
        field("UserType", draw(st.one_of(st.sampled_from([0, 2, 5, 99]).map(dumps), odd_numbers)))
    if draw(st.booleans()):
        field("Parameters", draw(name_value_arrays("Parameters")))
    if draw(st.booleans()):
        field("ModifiedProperties", draw(name_value_arrays("ModifiedProperties")))
    if draw(st.integers(min_value=0, max_value=3)) == 2:
        field(draw(st.sampled_from(["ExtendedProperties", "DeviceProperties", "OperationProperties"])),
              draw(name_value_arrays("Parameters")))
    if draw(st.integers(min_value=0, max_value=3)) == 1:
        field("Folders", draw(folders()))
    if draw(st.integers(min_value=0, max_value=3)) == 1:
        field(draw(st.sampled_from(["Actor", "Target"])), draw(identities()))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        pairs.append((draw(keys), draw(values)))
    if draw(st.integers(min_value=0, max_value=9)) == 7:
        pairs.append((dumps(draw(st.sampled_from(["Extra", "Parameters", "ObjectId"]))), draw(deep())))
    if draw(st.integers(min_value=0, max_value=99)) == 37:
        pairs.append((dumps(draw(st.sampled_from(["ObjectId", "Operation", "Parameters", "Comment"]))),
                      draw(huge_strings())))
    if pairs and draw(st.integers(min_value=0, max_value=4)) == 3:
        # a duplicate key (an index, not sampled_from(pairs): its repr would hold a huge string)
        pairs.append(pairs[draw(st.integers(min_value=0, max_value=len(pairs) - 1))])
    order = draw(st.permutations(range(len(pairs)))) if draw(st.integers(0, 3)) == 2 else range(len(pairs))
    return obj([pairs[i] for i in order])


elements = st.one_of(
    *([realistic_records()] * 6),
    values, deep(), deep(inner=values), unreadable_tokens,
    # an object with a token no parser reads, still balanced
    st.tuples(realistic_records(), unreadable_tokens).map(lambda rt: rt[0][:-1] + (b',"bad":' if len(rt[0]) > 2
                                                                                    else b'"bad":') + rt[1] + b"}"),
)

gaps = st.lists(st.sampled_from([b"", b" ", b"\n", b"\r\n", b"\t", b"  \n  "]), max_size=3).map(tuple)


@st.composite
def bodies(draw: st.DrawFn, min_size: int = 0, max_size: int = 8) -> Body:
    items = draw(st.lists(elements, min_size=min_size, max_size=max_size))
    return Body(tuple(items), draw(gaps), draw(st.integers(min_value=0, max_value=7)) == 5)


# -- explicit hostile elements (used as @example cases) -------------------------------------

REC = b'{"Id":"' + ID_MARK + b'-%s","RecordType":1,"Operation":"Set-Mailbox","CreationTime":"2026-11-20T10:00:00",' \
      b'"UserId":"alice@contoso.com","ClientIP":"10.0.0.1"'


def rec(tag: str, extra: bytes = b"") -> bytes:
    """A realistic record (Id ``<prefix>-<tag>``) with *extra* (``,"k":v`` pairs) appended."""
    return REC % tag.encode() + extra + b"}"


def params(value_json_text: str, field: str = "Parameters") -> bytes:
    if field == "ModifiedProperties":
        entry = {"Name": "Rules", "NewValue": value_json_text, "OldValue": value_json_text}
    else:
        entry = {"Name": "Identity", "Value": value_json_text}
    return b',"' + field.encode() + b'":' + orjson.dumps([entry])


HOSTILE: dict[str, bytes] = {
    "deep-list-300": rec("deep-list", b',"Extra":' + b"[" * 300 + b"1" + b"]" * 300),
    "deep-object-400": rec("deep-object", b',"Extra":' + b'{"a":' * 400 + b"null" + b"}" * 400),
    "deep-element-254": b"[" * 254 + b"]" * 254,
    "deep-element-255": b"[" * 255 + b"]" * 255,
    "deep-field-253": rec("deep-field-253", b',"Extra":' + b"[" * 253 + b"]" * 253),
    "deep-directory-254": b'{"Id":"' + ID_MARK + b'-deep-directory","RecordType":8,"Operation":"Update user.",'
                          b'"ModifiedProperties":[{"Name":"x","NewValue":' + b"[" * 254 + b"]" * 254 +
                          b',"OldValue":""}]}',
    "deep-params-252": rec("deep-params-252", b',"Parameters":[{"Name":"x","Value":' + b"[" * 252 + b"]" * 252 + b"}]"),
    "deep-element-1100": b"[" * 1100 + b"]" * 1100,
    "deep-params-object": rec("deep-params", b',"Parameters":[{"Name":"x","Value":' + b"[" * 300 + b"]" * 300 + b"}]"),
    "brackets-in-name": rec("brackets-name",
                            b',"Parameters":[{"Name":"' + b"[" * 500 + b"]" * 500 + b'","Value":"1"}]'),
    "brackets-value-balanced": rec("brackets-balanced", params("[" * 300 + "]" * 300)),
    "brackets-value-open": rec("brackets-open", params("{" * 300)),
    "brackets-modified": rec("brackets-modified", params("[" * 400 + "]" * 400, "ModifiedProperties")),
    "json-in-value": rec("json-value", params('[{"Name":"Forward","Value":"[\\"a@b.c\\"]"}]')),
    "json-in-modified": rec("json-modified", params('{"Rules":[{"Enabled":true}]}', "ModifiedProperties")),
    "deep-json-text-modified": rec("deep-json-modified", params('{"a":' * 300 + "1" + "}" * 300, "ModifiedProperties")),
    "surrogate-value": rec("surrogate-value", b',"Comment":"\\ud83d"'),
    "surrogate-key": rec("surrogate-key", b',"\\udc00":1'),
    "surrogate-operation": b'{"Id":"' + ID_MARK + b'-surrogate-op","RecordType":1,"Operation":"New-\\ud83dRule"}',
    "surrogate-id": b'{"Id":"' + ID_MARK + b'-surrogate-id\\ud83d","RecordType":1,"Operation":"x"}',
    "surrogate-in-params": rec("surrogate-params", b',"Parameters":[{"Name":"\\ud83d","Value":"\\udfff"}]'),
    "surrogate-json-text": rec("surrogate-json-text", params('["\\ud83d"]')),
    "nan": rec("nan", b',"Score":NaN'),
    "infinity": rec("infinity", b',"Score":Infinity,"Low":-Infinity'),
    "1e400": rec("1e400", b',"Score":1e400'),
    "nan-record-type": b'{"Id":"' + ID_MARK + b'-nan-rt","RecordType":NaN,"Operation":"x"}',
    "bad-bytes": rec("bad-bytes", b',"Comment":"caf\xe9 \xff\xfe"'),
    "bad-bytes-key": rec("bad-bytes-key", b',"k\xff":1'),
    "bad-bytes-id": b'{"Id":"' + ID_MARK + b'-bad\xff","RecordType":1,"Operation":"x"}',
    "big-int": rec("big-int", b',"Big":18446744073709551616,"Neg":-9223372036854775809'),
    "big-int-400-digits": rec("big-int-400", b',"Big":1' + b"0" * 400),
    "big-int-5000-digits": rec("big-int-5000", b',"Big":1' + b"0" * 5000),
    "minus-zero": rec("minus-zero", b',"Z":-0,"F":-0.0,"Tiny":1e-400'),
    "big-record-type": b'{"Id":"' + ID_MARK + b'-big-rt","RecordType":18446744073709551616,"Operation":"x"}',
    "odd-case": b'{"id":"' + ID_MARK + b'-odd-case","recordtype":15,"OPERATION":"UserLoggedIn",'
                b'"creationtime":"2026-11-20T10:00:00","userid":"Bob@Contoso.com","clientip":"10.1.1.1"}',
    "duplicate-keys": b'{"Id":"' + ID_MARK + b'-dup-a","Id":"' + ID_MARK + b'-dup-b","RecordType":1,"RecordType":2,'
                      b'"Operation":"x","Operation":"y"}',
    "duplicate-names": rec("dup-names", b',"Parameters":[{"Name":"A","Value":"1"},{"Name":"A","Value":"[2]"}]'),
    "nul-in-id-1": b'{"Id":"' + ID_MARK + b'-nul\\u0000a","RecordType":1,"Operation":"x\\u0000y"}',
    "nul-in-id-2": b'{"Id":"' + ID_MARK + b'-nul\\u0000b","RecordType":1,"Operation":"x\\u0000y"}',
    "nul-in-operation": b'{"Id":"' + ID_MARK + b'-nul\\u0000a","RecordType":1,"Operation":"x\\u0000z"}',
    "not-an-object-number": b"42",
    "not-an-object-string": b'"just a string"',
    "not-an-object-null": b"null",
    "not-an-object-list": b'[1,"two",{"three":3}]',
    "nan-element": b"NaN",
    "minus-infinity-element": b"-Infinity",
    "1e400-element": b"1e400",
    "unreadable-undefined": rec("undefined", b',"x":undefined'),
    "unreadable-single-quote": rec("single-quote", b",'x':1"),
    "unreadable-control-char": rec("control", b',"x":"a\x00b"'),
    "unreadable-trailing-comma": rec("trailing-comma", b',"x":1,'),
    "unreadable-token": b"undefined",
    "empty-object": b"{}",
    "control-in-unreadable-string": b'{"a":"x\ty",}',
}
HUGE: dict[str, bytes] = {
    "huge-string": rec("huge", b',"Comment":"' + b"A" * (3 << 20) + b'"'),
    "huge-brackets-value": rec("huge-brackets", params("[" * (1 << 20) + "]" * (1 << 20))),
    "huge-operation": b'{"Id":"' + ID_MARK + b'-huge-op","RecordType":1,"Operation":"' + b"O" * (2 << 20) + b'"}',
    "huge-key": rec("huge-key", b',"' + b"K" * (2 << 20) + b'":1'),
    "huge-bad-bytes": rec("huge-bad", b',"Comment":"' + b"B" * (2 << 20) + b'\xff\\ud83d"'),
}


def body_of(*names: str, bom: bool = False, gaps: tuple[bytes, ...] = ()) -> Body:
    table = {**HOSTILE, **HUGE}
    return Body(tuple(table[n] for n in names), gaps, bom)
