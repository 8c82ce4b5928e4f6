"""The web dashboard: ``machinery dashboard -A myapp:app`` (``pip install 'machinery-core[dashboard]'``).

Workers (live and lost), queues with pending and delayed counts, recent tasks, a page per task
(arguments when recorded, result, retries, group/chord progress, trace link) and dead letters; pages
update live. With a token, three actions: re-send a failed task or a dead letter, purge a queue.

Embedding it in a program (any ASGI server serves it)::

    from machinery.dashboard.web import DashboardSettings, create_app
    asgi = create_app(app, DashboardSettings(token="s3cret"))

This package imports no web framework itself, so the CLI loads without the extra.
"""
