"""Pure collector logic: no azure, aiohttp or duckdb imports below this package."""
