"""``memory://``: broker, result backend and lock inside one process (tests, eager mode)."""
