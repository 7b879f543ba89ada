"""Who may do what on the bus: each NATS user's permissions, derived from ``fence.subjects``.

Pure: the table in ``fence.subjects`` says which identity asks, answers,
publishes and watches each subject; this turns it into nats-server
permissions (``natsconf`` renders them).  Nothing here is written by hand, so
a subject or event kind cannot be forgotten (``.preflight`` and ``.fs`` events
once were, and nats-server refused them silently).
"""

from __future__ import annotations

import msgspec

from fence import subjects

USERS = subjects.IDENTITIES


class Permissions(msgspec.Struct, kw_only=True, frozen=True):
    """One NATS user's rights.  Anything not allowed is denied: every user gets explicit
    publish and subscribe allow lists (and ``publish_deny`` ``>`` where nats-server would
    read an empty one as allow-all), so no default-allow ever applies."""

    publish: tuple[str, ...] = ()
    publish_deny: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    allow_responses: bool = False
    """May reply to requests it received (and only once each), without broad publish rights."""


def inbox_prefix(user: str) -> str:
    """Each user's replies arrive under its own prefix, the only inbox it may subscribe to."""
    return f"_INBOX.{user}"


def permissions_of(user: str, requests=subjects.REQUESTS, events=subjects.EVENTS) -> Permissions:
    """``user``'s rights: exactly what the subject table gives it (``fence.subjects``), nothing else.

    Allowed: publishing the requests it asks and the events it publishes;
    subscribing to its inbox, the requests it answers (replying through
    ``allow_responses``) and the events it watches (``fence.events.>`` when it
    watches every kind, so ``fence run`` can follow one sandbox with
    ``fence.events.<id>.>``).  The allow lists alone deny the rest, with one
    exception: nats-server reads an empty publish allow list as *allow all*
    unless ``allow_responses`` is set, so a user with nothing to publish nor
    answer is denied ``>``.
    """
    answers = tuple(r.subject for r in requests if user in r.answered_by)
    publish = (
        *(r.subject for r in requests if user in r.asked_by),
        *(e.subject for e in events if user in e.published_by),
    )
    watched = [e.subject for e in events if user in e.watched_by]
    watches = (subjects.EVENTS_ALL,) if events and len(watched) == len(events) else tuple(watched)
    return Permissions(
        publish=publish,
        publish_deny=() if publish or answers else (">",),
        subscribe=(inbox_prefix(user) + ".>", *answers, *watches),
        allow_responses=bool(answers),
    )


PERMISSIONS: dict[str, Permissions] = {user: permissions_of(user) for user in USERS}
