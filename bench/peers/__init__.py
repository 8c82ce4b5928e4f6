"""Peers measured with ``--peers``: Dramatiq and Celery, from their own virtualenv (see runner.py)."""
