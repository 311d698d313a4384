"""enums.py is the generated image of shared/reference/audit-enums.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from function_app.records import _gen_enums, enums

from ._samples import ENUMS_JSON


@pytest.fixture(scope="module")
def published() -> dict[str, object]:
    if not ENUMS_JSON.is_file():
        pytest.skip(f"{ENUMS_JSON} not found")
    loaded: dict[str, object] = json.loads(ENUMS_JSON.read_text(encoding="utf-8"))
    return loaded


def test_enums_module_is_up_to_date(published: dict[str, object]) -> None:
    current = Path(enums.__file__).read_text(encoding="utf-8")
    assert current == _gen_enums.render(published), "re-run: python -m function_app.records._gen_enums"


@pytest.mark.parametrize(("constant", "key"), _gen_enums.TABLES)
def test_tables_equal_the_json(published: dict[str, object], constant: str, key: str) -> None:
    table = published[key]
    assert isinstance(table, dict)
    assert getattr(enums, constant) == {int(k): v for k, v in table.items()}


def test_names_with_spaces_are_kept_as_published() -> None:
    assert enums.RECORD_TYPE_NAMES[22] == "Viva Engage"
    assert enums.RECORD_TYPE_NAMES[216] == "Viva Goals"
    assert len(enums.RECORD_TYPE_NAMES) == 257
