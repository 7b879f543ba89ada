"""``fence up``, ``fence status``, ``fence down``: the supervisor of the NATS bus and services.

``fence up`` owns everything a shared fence needs on one host:

1. a private runtime directory (``fence.runtime.runtime_dir()``, mode 0700)
   holding the generated nats-server config and one credentials file per bus
   user (0600), each with a fresh random password;
2. a nats-server listening on 127.0.0.1 only, on a random port it reports
   through its ports file (``ports_file_dir``: no probe-then-bind race), with
   no anonymous access and least-privilege permissions per user (see
   ``PERMISSIONS``, generated from the subject table of ``fence.subjects``),
   the payload limit of ``fence.bus`` and a durable JetStream store outside
   the runtime dir;
3. one process per service (``python -m fence.serve <component>``), each
   healthy once it answers ``$SRV.PING.<service>`` over NATS with its own pid;
   ``$SRV.INFO`` then tells where its Prometheus ``/metrics`` is served.

Once all are healthy it writes ``supervisor.json`` (``fence.runtime.SupervisorInfo``),
which is how ``fence run`` and ``fence status`` find it.  It then restarts
crashed or hung services with backoff, brings a crashed nats-server back on
the same port, and on SIGINT/SIGTERM stops everything within a few seconds
and removes every file it created (``supervise``).  Children run in their
own sessions so a terminal's Ctrl-C reaches the supervisor alone and the stop
order is ours; services also exit by themselves if the supervisor dies.

``fence up --detach`` runs the same supervisor in the background; its
stdout/stderr go to ``$XDG_STATE_HOME/fence/supervisor.log`` (default
``~/.local/state/fence/supervisor.log``, 0600, previous run kept as
``.log.1``).  The log is kept *outside* the runtime dir on purpose: it holds
no secret and is what you want after a crash.  A foreground ``fence up``
prints only on stderr (a ready line, errors).

One module per job:

* ``permissions``: each bus user's rights, derived from ``fence.subjects`` (pure);
* ``natsconf``: the nats-server config text, its ports file, its binary;
* ``child``: one supervised process and its restart backoff;
* ``supervise``: start, health checks, restarts, stop (``Supervisor``);
* ``files``: lock, log, data dir, leftovers of a supervisor that died;
* ``output``: ``[fence] ...`` and ``Error: ...`` lines;
* ``commands``: ``up``/``status``/``down`` (``python -m fence.supervisor``).
"""

from fence.supervisor.child import Child
from fence.supervisor.commands import main, main_down, main_status, main_up
from fence.supervisor.natsconf import NatsPorts, nats_config, nats_server_binary, render_user
from fence.supervisor.permissions import PERMISSIONS, USERS, Permissions, inbox_prefix, permissions_of
from fence.supervisor.supervise import Supervisor

__all__ = [
    "Child",
    "NatsPorts",
    "PERMISSIONS",
    "Permissions",
    "Supervisor",
    "USERS",
    "inbox_prefix",
    "main",
    "main_down",
    "main_status",
    "main_up",
    "nats_config",
    "nats_server_binary",
    "permissions_of",
    "render_user",
]
