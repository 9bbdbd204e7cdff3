"""General tools below `data`, `model` and `orchestrator`: storage (local folders and bucket URIs behind the
same calls), redaction of secrets, the user-error base, the console, the local Ray start and Ray's private
API."""
