"""Webhook delivery: safe targets and the HTTP transport (the outbox and worker build on them)."""
