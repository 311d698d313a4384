"""The Office 365 Management Activity API adapter: clouds, auth, the AF error table, retries, the client."""
