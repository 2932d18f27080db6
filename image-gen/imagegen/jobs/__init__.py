"""Asynchronous jobs: Prefer handling, submission, the runner, resuming after a crash,
progress events, webhooks and bounds on event streams."""
