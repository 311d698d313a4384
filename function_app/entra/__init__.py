"""Entra ID sign-in and directory audit logs: polled from Microsoft Graph, or streamed by a diagnostic setting."""
