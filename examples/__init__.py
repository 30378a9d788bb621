"""Runnable syncws examples (python -m syncws examples.chat:app)."""
