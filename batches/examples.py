"""Example tasks that wait (examples.fanout, examples.wait_token) — see docs/API.md."""
