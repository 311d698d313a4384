"""Adapter tests run against real emulators: the session's Azurite comes from tests/conftest.py."""
