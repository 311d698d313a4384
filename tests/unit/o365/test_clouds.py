"""Cloud names and endpoints."""

from __future__ import annotations

import pytest

from function_app.o365.clouds import Cloud


@pytest.mark.parametrize(
    ("name", "cloud"),
    [
        ("Enterprise", Cloud.ENTERPRISE),
        ("enterprise", Cloud.ENTERPRISE),
        ("GCC", Cloud.GCC),
        ("gcc", Cloud.GCC),
        ("GCCHigh", Cloud.GCC_HIGH),
        ("gcchigh", Cloud.GCC_HIGH),
        ("GCC High", Cloud.GCC_HIGH),
        (" gcc-high ", Cloud.GCC_HIGH),
        ("DoD", Cloud.DOD),
        ("DOD", Cloud.DOD),
    ],
)
def test_parse_ignores_case(name: str, cloud: Cloud) -> None:
    assert Cloud.parse(name) is cloud


def test_parse_error_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'China'.*Enterprise, GCC, GCCHigh, DoD"):
        Cloud.parse("China")


@pytest.mark.parametrize(
    ("cloud", "root", "audience", "authority"),
    [
        (
            Cloud.ENTERPRISE,
            "https://manage.office.com/api/v1.0",
            "https://manage.office.com",
            "login.microsoftonline.com",
        ),
        (
            Cloud.GCC,
            "https://manage-gcc.office.com/api/v1.0",
            "https://manage-gcc.office.com",
            "login.microsoftonline.com",
        ),
        (
            Cloud.GCC_HIGH,
            "https://manage.office365.us/api/v1.0",
            "https://manage.office365.us",
            "login.microsoftonline.us",
        ),
        (
            Cloud.DOD,
            "https://manage.protection.apps.mil/api/v1.0",
            "https://manage.protection.apps.mil",
            "login.microsoftonline.us",
        ),
    ],
)
def test_endpoints(cloud: Cloud, root: str, audience: str, authority: str) -> None:
    assert cloud.api_root == root
    assert cloud.audience == audience
    assert cloud.scope == f"{audience}/.default"
    assert cloud.authority_host == authority


def test_value_is_the_cli_spelling() -> None:
    assert [c.value for c in Cloud] == ["Enterprise", "GCC", "GCCHigh", "DoD"]
