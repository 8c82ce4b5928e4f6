"""Workflows: Group (run in parallel), Chord (group, then a callback), Chain (one after another)."""

from __future__ import annotations

from collections.abc import Iterable

from .signature import Signature, new_uuid

__all__ = ["Chain", "Chord", "Group"]


class Group:
    """Tasks that run in parallel (Machinery's ``NewGroup``): each member gets the group uuid and
    the member count."""

    def __init__(self, signatures: Iterable[Signature], group_uuid: str = "") -> None:
        self.signatures = list(signatures)
        self.group_uuid = group_uuid or new_uuid("group")
        for sig in self.signatures:
            sig.ensure_uuid()
            sig.group_uuid = self.group_uuid
            sig.group_task_count = len(self.signatures)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.signatures)

    def __len__(self) -> int:
        return len(self.signatures)

    def __repr__(self) -> str:
        return f"<Group {self.group_uuid} {self.signatures}>"


class Chord:
    """A group whose callback runs once, after every member succeeded, with all their results
    appended to its arguments (in group order) unless the callback is immutable."""

    def __init__(self, group: Group | Iterable[Signature], callback: Signature) -> None:
        self.group = group if isinstance(group, Group) else Group(group)
        self.callback = callback
        if callback.ignore_parent_results:  # Celery's .si(): Go reads the flag on the callback itself
            callback.immutable = True
        callback.ensure_uuid("chord")
        for sig in self.group.signatures:
            sig.chord_callback = callback

    def __repr__(self) -> str:
        return f"<Chord {self.group!r} -> {self.callback!r}>"


class Chain:
    """Tasks run one after another (Machinery's ``NewChain``): each one's results are appended to
    the next one's arguments unless the finished task is immutable (Go's flag) or the next one
    ignores its parent's results (Celery's ``.si()``)."""

    def __init__(self, signatures: Iterable[Signature]) -> None:
        self.signatures = list(signatures)
        if not self.signatures:
            raise ValueError("a Chain needs at least one signature")
        for sig in self.signatures:
            sig.ensure_uuid()
        for current, following in zip(self.signatures, self.signatures[1:], strict=False):
            current.on_success = [following]
            if following.ignore_parent_results:  # Celery's .si(): Go reads the flag on the finished task
                current.immutable = True

    def __repr__(self) -> str:
        return f"<Chain {self.signatures}>"
