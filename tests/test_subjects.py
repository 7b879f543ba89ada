"""The subject table (``fence.subjects``) and the NATS permissions generated from it.

The table must name real message types and every event kind the code
publishes; the permissions must give each identity exactly what the table
says, checked twice: on the generated ``Permissions`` (pure) and against a real
nats-server running the generated config (what nats-server itself enforces,
including its reading of empty allow lists).  The example config in
``deploy/nats`` must show the same permissions.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from conftest import session_dir
from fence import messages, subjects
from fence.subjects import CLIENT, EVENTS, EXECUTOR, IDENTITIES, MONITOR, PROXY, REQUESTS, SERVICES, SUPERVISOR

REPO = Path(__file__).resolve().parent.parent
SANDBOX = "0123abcd4567ef89"
SUB_WILDCARD = f"fence.events.{SANDBOX}.>"
"""How ``fence run -d/-m`` follows its own sandbox."""
NOBODY = "nobody"
"""A user the table gives nothing: nats-server must still refuse it everything but its inbox."""


def matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def concrete(pattern: str) -> list[str]:
    """Subjects a pattern of the table stands for, as clients really use them."""
    if pattern == subjects.DISCOVERY:
        return ["$SRV.PING", "$SRV.INFO.fence-config", "$SRV.STATS.fence-proxy.abc123"]
    return [pattern.replace("*", SANDBOX)]


TABLE_SUBJECTS = [s for r in REQUESTS for s in concrete(r.subject)] + [s for e in EVENTS for s in concrete(e.subject)]
OUTSIDE = ["fence.other", f"fence.events.{SANDBOX}.unknown", "fence.config.resolve.more", "foo", "$JS.API.INFO"]


# --- what the table says (the test's own reading, independent of the generator) --------------


def may_publish(user: str, subject: str) -> bool:
    return any(user in r.asked_by and matches(r.subject, subject) for r in REQUESTS) or any(
        user in e.published_by and matches(e.subject, subject) for e in EVENTS
    )


def may_subscribe(user: str, subject: str) -> bool:
    if all(user in e.watched_by for e in EVENTS) and matches(subjects.EVENTS_ALL, subject):
        return True  # who watches every kind gets fence.events.> (to follow one sandbox: SUB_WILDCARD)
    if subject == SUB_WILDCARD:
        return False
    return (
        matches(f"_INBOX.{user}.>", subject)
        or any(user in r.answered_by and matches(r.subject, subject) for r in REQUESTS)
        or any(user in e.watched_by and matches(e.subject, subject) for e in EVENTS)
    )


# --- the table itself ------------------------------------------------------------------------


def test_table_names_real_messages_and_identities():
    for r in REQUESTS:
        assert r.answered_by and r.asked_by, r
        assert set(r.answered_by) <= set(SERVICES) and set(r.asked_by) <= set(IDENTITIES), r
        for name in (r.request, r.reply):
            if r.subject != subjects.DISCOVERY:
                assert issubclass(getattr(messages, name), messages.Message), (r, name)
    for e in EVENTS:
        assert e.published_by and set(e.published_by) <= set(IDENTITIES), e
        assert set(e.watched_by) <= set(IDENTITIES) and MONITOR in e.watched_by, e
    assert sorted(e.message for e in EVENTS) == sorted(t.__name__ for t in messages.Event.__args__)
    every = [r.subject for r in REQUESTS] + [e.kind for e in EVENTS]
    assert len(every) == len(set(every))
    # the constants the services serve are the table's
    assert {
        subjects.CONFIG_RESOLVE,
        subjects.PROXY_SESSION_OPEN,
        subjects.PROXY_SESSION_CLOSE,
        subjects.EXEC_PLAN,
        subjects.MONITOR_RECENT,
    } <= {r.subject for r in REQUESTS}


def test_every_event_kind_the_code_publishes_is_in_the_table_and_back():
    """``event(sandbox, "kind")`` literals in the sources are exactly the table's kinds."""
    found: dict[str, list[str]] = {}
    for folder in ("libs", "services"):
        for path in (REPO / folder).rglob("*.py"):
            for kind in re.findall(r'\bevent\([^()]*?,\s*"([a-z_]+)"\)', path.read_text()):
                found.setdefault(kind, []).append(str(path.relative_to(REPO)))
    assert set(found) == {e.kind for e in EVENTS}, found


def test_event_refuses_a_kind_the_table_does_not_know():
    assert subjects.event(SANDBOX, "net") == f"fence.events.{SANDBOX}.net"
    with pytest.raises(ValueError, match="unknown event kind 'nett'"):
        subjects.event(SANDBOX, "nett")


def test_subjects_is_cheap_to_import():
    code = (
        "import sys, fence.subjects; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('asyncio', 'nats', 'json5', 'subprocess', 'dataclasses', 'prometheus_client') or m == 'fence.messages'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the generated permissions -----------------------------------------------------------------


def allowed(allow: tuple[str, ...], deny: tuple[str, ...], subject: str) -> bool:
    return any(matches(a, subject) for a in allow) and not any(matches(d, subject) for d in deny)


def test_generated_permissions_are_exactly_the_table():
    from fence.supervisor import PERMISSIONS

    assert list(PERMISSIONS) == list(IDENTITIES)
    for user, p in PERMISSIONS.items():
        for subject in TABLE_SUBJECTS + OUTSIDE:
            assert allowed(p.publish, p.publish_deny, subject) == may_publish(user, subject), (user, subject)
            assert allowed(p.subscribe, (), subject) == may_subscribe(user, subject), (user, subject)
        assert p.allow_responses == any(user in r.answered_by for r in REQUESTS), user


def test_forbidden_cases_stay_forbidden():
    from fence.supervisor import PERMISSIONS

    def pub(user, subject):
        p = PERMISSIONS[user]
        return allowed(p.publish, p.publish_deny, subject)

    def sub(user, subject):
        p = PERMISSIONS[user]
        return allowed(p.subscribe, (), subject)

    net = f"fence.events.{SANDBOX}.net"
    # only the proxy decides network verdicts
    assert [u for u in IDENTITIES if pub(u, net)] == [PROXY]
    # a client cannot listen on a request subject (forge replies) nor answer discovery
    assert not any(sub(CLIENT, r.subject) for r in REQUESTS)
    assert not sub(CLIENT, "$SRV.PING")
    # the monitor can never start or plan a sandbox, nor forge events
    assert not pub(MONITOR, subjects.EXEC_PLAN) and not PERMISSIONS[MONITOR].publish
    assert not any(pub(MONITOR, f"fence.events.{SANDBOX}.{e.kind}") for e in EVENTS)
    # services publish nothing but their own events (their replies go through allow_responses); the
    # executor runs detached sandboxes, so it also resolves policies, opens their proxy sessions and
    # publishes their events (never .net)
    executor_asks = {subjects.CONFIG_RESOLVE, subjects.PROXY_SESSION_OPEN, subjects.PROXY_SESSION_CLOSE}
    for user in SERVICES:
        expected = (
            {net}
            if user == PROXY
            else executor_asks | {f"fence.events.{SANDBOX}.{e.kind}" for e in EVENTS if e.kind != "net"}
            if user == EXECUTOR
            else set()
        )
        assert {s for s in TABLE_SUBJECTS if pub(user, s)} == expected, user
    # only the executor answers the detached-sandbox API, and only clients ask it
    for subject in subjects.EXEC_FLEET:
        assert [u for u in IDENTITIES if pub(u, subject)] == [CLIENT]
        assert [u for u in IDENTITIES if sub(u, subject)] == [EXECUTOR]
    # the supervisor only checks health
    assert PERMISSIONS[SUPERVISOR].publish == (subjects.DISCOVERY,)
    # nobody reads another user's inbox
    for user in IDENTITIES:
        assert [u for u in IDENTITIES if sub(u, f"_INBOX.{user}.x.y")] == [user]


def test_an_identity_with_nothing_to_publish_is_denied_everything():
    """nats-server reads an empty publish allow list as "allow all" unless allow_responses is set."""
    from fence.supervisor import permissions_of

    p = permissions_of("nobody")
    assert p.publish == () and p.publish_deny == (">",) and not p.allow_responses
    assert p.subscribe == ("_INBOX.nobody.>",)


def test_the_deploy_example_shows_the_generated_permissions():
    from fence.supervisor import render_user

    text = (REPO / "deploy" / "nats" / "single-host.conf.example").read_text()
    for user in IDENTITIES:
        assert render_user(user, "<random>") in text, f"deploy/nats example out of date for {user}"
    assert text.count("{ user: ") == len(IDENTITIES)


# --- the same, enforced by a real nats-server ---------------------------------------------------


@pytest.fixture(scope="module")
def server():
    from fence.supervisor import PERMISSIONS, NatsPorts, nats_config, nats_server_binary, permissions_of

    root = session_dir("fence-subjects-")
    users = {**PERMISSIONS, NOBODY: permissions_of(NOBODY)}  # plus one the table gives nothing
    passwords = {u: f"pw-{u}" for u in users}
    conf = root / "nats.conf"
    conf.write_text(nats_config(passwords, str(root), str(root / "store"), permissions=users))
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        url = ""
        while True:
            ports = list(root.glob("nats-server_*.ports"))
            if ports and ports[0].read_bytes():
                url = msgspec.json.decode(ports[0].read_bytes(), type=NatsPorts).nats[0]
                break
            assert proc.poll() is None and time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.02)
        yield url, passwords
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


async def refusals(url: str, user: str, password: str) -> tuple[set[str], set[str]]:
    """The subjects nats-server refuses ``user`` to publish to and to subscribe to."""
    import nats

    errors: list[str] = []

    async def on_error(e):
        errors.append(str(e))

    nc = await nats.connect(
        url, user=user, password=password, allow_reconnect=False, connect_timeout=2, error_cb=on_error
    )
    try:
        for subject in TABLE_SUBJECTS + OUTSIDE:
            await nc.publish(subject, b"{}")
        for subject in [*TABLE_SUBJECTS, *OUTSIDE, SUB_WILDCARD, *(f"_INBOX.{u}.x.y" for u in IDENTITIES)]:
            await nc.subscribe(subject)
        await nc.flush()
        await asyncio.sleep(0.3)  # -ERR lines arrive after the PONG of flush on a loaded machine too
    finally:
        await nc.close()
    found = [m for e in errors if (m := re.search(r'violation for (publish|subscription) to "([^"]*)"', e))]
    assert len(found) == len(errors), errors
    # nats-py lowercases server errors: compare lowercased
    return ({m[2] for m in found if m[1] == "publish"}, {m[2] for m in found if m[1] == "subscription"})


@pytest.mark.nats
@pytest.mark.parametrize("user", [*IDENTITIES, NOBODY])
def test_nats_server_enforces_the_table(server, user):
    url, passwords = server
    pub_refused, sub_refused = asyncio.run(refusals(url, user, passwords[user]))
    publish = TABLE_SUBJECTS + OUTSIDE
    assert sorted(pub_refused) == sorted(s.lower() for s in publish if not may_publish(user, s))
    subscribe = [*TABLE_SUBJECTS, *OUTSIDE, SUB_WILDCARD, *(f"_INBOX.{u}.x.y" for u in IDENTITIES)]
    assert sorted(sub_refused) == sorted(s.lower() for s in subscribe if not may_subscribe(user, s))
