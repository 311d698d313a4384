"""Thin trigger adapters, one blueprint per concern: decode the binding, get the cached
Runtime, call one function of ``function_app.core.delivery``."""
