"""The Purview audit search (Microsoft Graph ``security/auditLog/queries``): the history the feed cannot serve."""
