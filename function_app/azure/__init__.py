"""Adapters and orchestration for the Azure Functions app: the Storage queue hand-off, the
dead-letter container, the dependencies the triggers share, and what each trigger runs."""
