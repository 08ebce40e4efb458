"""The connection budget of a fleet: how many threads per process the database can afford.

With the governor, a process holds at most N connections per database alias: one per worker
thread that used the alias (``CONN_MAX_AGE > 0`` keeps it; ``CONN_MAX_AGE = 0`` closes it after
each call, so N is then the most open at once). A fleet of P processes on R replicas, using A
aliases of one server, can so hold ``N x P x R x A`` connections, and this must stay within what the
server gives out::

    usable = max_connections - superuser_reserved_connections - reserved_connections (PostgreSQL 16+)
             - the connections you keep for everything else (migrations, cron jobs, shells, monitoring)

Everything here is a pure function except :func:`server_limits`, which asks a live PostgreSQL.
"""

import textwrap
from dataclasses import dataclass
from typing import List, Optional

__all__ = ["Budget", "ServerLimits", "plan", "report_lines", "server_limits", "PGBOUNCER_NOTES"]


@dataclass(frozen=True)
class Budget:
    max_connections: int
    reserved: int = 0  # kept free for other clients (ours)
    server_reserved: int = 0  # superuser_reserved_connections + reserved_connections (the server's)
    processes: int = 1
    replicas: int = 1
    aliases: int = 1
    threads: Optional[int] = None  # N per process, if known

    @property
    def usable(self) -> int:
        """Connections the fleet may hold."""
        return max(0, self.max_connections - self.server_reserved - self.reserved)

    @property
    def clients(self) -> int:
        """Connections one thread count costs across the fleet (processes x replicas x aliases)."""
        return self.processes * self.replicas * self.aliases

    @property
    def safe_threads(self) -> int:
        """The largest N per process that keeps the fleet within ``usable`` (0: none does)."""
        return self.usable // self.clients if self.clients else 0

    @property
    def demand(self) -> Optional[int]:
        """Connections the fleet may hold with ``threads`` per process."""
        return None if self.threads is None else self.threads * self.clients

    @property
    def fits(self) -> Optional[bool]:
        return None if self.demand is None else self.demand <= self.usable


def plan(
    max_connections: int,
    *,
    reserved: int = 0,
    server_reserved: int = 0,
    processes: int = 1,
    replicas: int = 1,
    aliases: int = 1,
    threads: Optional[int] = None,
) -> Budget:
    for name, value, low in (
        ("max_connections", max_connections, 1),
        ("reserved", reserved, 0),
        ("server_reserved", server_reserved, 0),
        ("processes", processes, 1),
        ("replicas", replicas, 1),
        ("aliases", aliases, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} is not valid: expected an int of at least {low}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r} is not valid: expected an int of at least 1")
    return Budget(max_connections, reserved, server_reserved, processes, replicas, aliases, threads)


def formula(budget: Budget) -> str:
    """``N x P processes x R replicas x A aliases`` with only the factors that are not 1."""
    parts = []
    for count, noun in ((budget.processes, "process"), (budget.replicas, "replica"), (budget.aliases, "alias")):
        plural = {"process": "processes", "replica": "replicas", "alias": "aliases"}[noun]
        parts.append(f"{count} {noun if count == 1 else plural}")
    return " x ".join(parts)


def usable_formula(budget: Budget) -> str:
    text = f"{budget.max_connections} max_connections"
    if budget.server_reserved:
        text += f" - {budget.server_reserved} reserved by the server"
    if budget.reserved:
        text += f" - {budget.reserved} kept for other clients"
    return f"{text} = {budget.usable}"


PGBOUNCER_NOTES = (
    "PgBouncer, transaction pooling (pool_mode = transaction): Django's connections are client "
    "connections to PgBouncer; pass its max_client_conn as --max-connections for this budget. The "
    "server then holds at most default_pool_size (+ reserve_pool_size) connections per database/user "
    "pair, whatever N is, so size that pool against the server's max_connections instead. Set "
    "DISABLE_SERVER_SIDE_CURSORS = True on the alias; CONN_MAX_AGE > 0 keeps the client connections "
    "(cheap) open.",
    "PgBouncer, session pooling (pool_mode = session): each client connection holds a server "
    "connection for as long as it is open, so this budget applies to the server as is.",
    "Connections opened outside the pool are not counted: the main thread (startup code, "
    "management commands), other threads you start, and other applications: keep them in "
    "--reserved.",
)


def report_lines(budget: Budget, *, threads_source: str = "") -> List[str]:
    """The plain-text report of ``threadgov budget``."""
    lines = [
        f"usable connections:   {usable_formula(budget)}",
        f"clients per thread:   {formula(budget)} = {budget.clients}",
        f"safe N per process:   {budget.safe_threads} "
        f"({budget.safe_threads} x {budget.clients} = {budget.safe_threads * budget.clients} "
        f"connections <= {budget.usable})",
    ]
    if budget.safe_threads == 0:
        lines.append(
            "                      no N fits: fewer processes, replicas or aliases, a bigger server, "
            "or PgBouncer in transaction pooling mode"
        )
    if budget.threads is not None:
        verdict = "fits" if budget.fits else f"EXCEEDS the budget by {budget.demand - budget.usable}"
        source = f" ({threads_source})" if threads_source else ""
        lines.append(
            f"with N = {budget.threads}{source}: {budget.threads} x {budget.clients} = "
            f"{budget.demand} connections: {verdict}"
        )
    lines.append("")
    lines.append("Set it with ASGI_THREADS=N (or THREADGOV = {\"MAX_THREADS\": N}) and CONN_MAX_AGE > 0.")
    lines.append("")
    for note in PGBOUNCER_NOTES:
        lines.append(textwrap.fill(note, 100, initial_indent="Note: ", subsequent_indent="      "))
    return lines


@dataclass(frozen=True)
class ServerLimits:
    max_connections: int
    superuser_reserved: int
    reserved: int  # reserved_connections, PostgreSQL 16+ (0 before)

    @property
    def server_reserved(self) -> int:
        return self.superuser_reserved + self.reserved


def server_limits(connection) -> ServerLimits:
    """Ask a PostgreSQL server (a Django connection of a ``postgresql`` alias) for its limits."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "coalesce(current_setting('reserved_connections', true), '0')::int"
        )
        max_connections, superuser_reserved, reserved = cursor.fetchone()
    return ServerLimits(max_connections, superuser_reserved, reserved)
