"""``sqlite:///path.db``: broker, result backend and lock on one SQLite file, safe across processes."""
