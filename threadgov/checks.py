"""System checks of the ``threadgov`` app (``manage.py check``), registered when the app is ready.

=================  =============================================================================
ID                 What
=================  =============================================================================
threadgov.E001     an environment variable (``ASGI_THREADS``, ``THREADGOV_MAX_QUEUE``,
                   ``THREADGOV_QUEUE_TIMEOUT``, ``THREADGOV_SLOW_CALL``, ``WEB_CONCURRENCY``) is
                   invalid
threadgov.E002     ``THREADGOV`` is not a dict
threadgov.E003     ``THREADGOV`` has an unknown key
threadgov.E004     a ``THREADGOV`` value is invalid
threadgov.E005     ``THREADGOV["METRICS"]`` is on but prometheus_client is not installed
threadgov.W001     N x processes x aliases exceeds ``MAX_CONNECTIONS - RESERVED_CONNECTIONS``
threadgov.W002     the same against the server's ``max_connections`` (``check --database ALIAS``)
threadgov.W003     ``CONN_MAX_AGE = 0`` on a database alias (every call opens a new session)
threadgov.W004     the server's limits could not be read (``check --database ALIAS``)
=================  =============================================================================
"""

from typing import Dict, List, Optional, Tuple

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from . import _budget
from ._config import KEYS, SETTING, WORKERS_VAR, Config, label, resolve_config

__all__ = [
    "E001", "E002", "E003", "E004", "E005", "W001", "W002", "W003", "W004",
    "check_settings", "check_connection_budget", "check_persistent_connections",
]

TAG = "threadgov"

E001 = Error(
    "An environment variable read by threadgov has an invalid value.",
    hint="Unset the variable or fix its value.",
    id="threadgov.E001",
)
E002 = Error(
    f"The {SETTING} setting must be a dict.",
    hint="Valid keys: " + ", ".join(KEYS) + ".",
    id="threadgov.E002",
)
E003 = Error(
    f"The {SETTING} setting has an unknown key.",
    hint="Valid keys: " + ", ".join(KEYS) + ".",
    id="threadgov.E003",
)
E004 = Error(f"A {SETTING} setting has an invalid value.", id="threadgov.E004")
E005 = Error(
    f'{label("METRICS")} is True but prometheus_client is not installed.',
    hint="pip install 'threadgov[metrics]' (or prometheus_client), or set METRICS to False.",
    id="threadgov.E005",
)
W001 = Warning(
    "The fleet may open more database connections than MAX_CONNECTIONS - RESERVED_CONNECTIONS.",
    id="threadgov.W001",
)
W002 = Warning(
    "The fleet may open more database connections than the server accepts.",
    id="threadgov.W002",
)
W003 = Warning(
    "CONN_MAX_AGE = 0: every governed call opens and closes its own database session.",
    hint=(
        "Set CONN_MAX_AGE to a number of seconds (e.g. 60) or None: with threadgov at most N "
        "threads per process keep one connection each, so persistent connections are bounded."
    ),
    id="threadgov.W003",
)
W004 = Warning("The database server's connection limits could not be read.", id="threadgov.W004")

_KIND_TO_CHECK = {"environment": E001, "setting": E002, "unknown": E003, "value": E004}


def _like(template, msg: str, hint: Optional[str] = None, obj=None):
    return type(template)(msg, hint=hint if hint is not None else template.hint, obj=obj, id=template.id)


def governed() -> bool:
    """Whether this project uses threadgov: the app is installed, ``THREADGOV`` is set, or a
    governor is installed in this process. The checks are silent otherwise (they are registered
    globally once this module is imported)."""
    from django.apps import apps

    from ._governor import current

    return apps.is_installed("threadgov") or hasattr(settings, SETTING) or current() is not None


def _config() -> Tuple[Optional[Config], list]:
    if not governed():
        return None, []
    return resolve_config()


@register(TAG)
def check_settings(app_configs=None, **kwargs) -> List[Error]:
    """E001-E005: every invalid environment variable and ``THREADGOV`` key or value, one each."""
    config, problems = _config()
    errors = [_like(_KIND_TO_CHECK[p.kind], p.message, p.hint or None) for p in problems]
    if config is not None and config.metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            errors.append(E005)
    return errors


def _server_aliases() -> Dict[str, dict]:
    """Aliases that open connections to a database server (SQLite and the dummy backend do not)."""
    aliases = {}
    for alias, conf in settings.DATABASES.items():
        engine = conf.get("ENGINE", "") or ""
        if engine.endswith(("sqlite3", "dummy")) or not engine:
            continue
        aliases[alias] = conf
    return aliases


def _server_key(conf: dict) -> tuple:
    return (conf.get("ENGINE"), conf.get("HOST") or "", str(conf.get("PORT") or ""))


def _processes_text(config: Config) -> str:
    source = config.sources.get("worker_processes", "default")
    if source == "default":
        return f"{config.worker_processes} process (set {label('WORKER_PROCESSES')} or {WORKERS_VAR})"
    plural = "process" if config.worker_processes == 1 else "processes"
    return f"{config.worker_processes} {plural} ({source})"


@register(TAG, Tags.database)
def check_connection_budget(app_configs=None, databases=None, **kwargs) -> List[Warning]:
    """W001 against ``MAX_CONNECTIONS``; W002/W004 against each server in ``databases``."""
    config, problems = _config()
    if config is None:
        return []  # check_settings reports why
    n = config.size.size
    warnings = []
    server_aliases = _server_aliases()

    if config.max_connections is not None and server_aliases:
        budget = _budget.plan(
            config.max_connections,
            reserved=config.reserved_connections,
            processes=config.worker_processes,
            aliases=len(server_aliases),
            threads=n,
        )
        if not budget.fits:
            warnings.append(
                _like(
                    W001,
                    f"threadgov may open {budget.demand} database connections: N={n} threads "
                    f"({config.size.source}) x {_processes_text(config)} x {len(server_aliases)} "
                    f"database alias{'es' if len(server_aliases) != 1 else ''} "
                    f"({', '.join(server_aliases)}), more than {label('MAX_CONNECTIONS')} - "
                    f"{label('RESERVED_CONNECTIONS')} = {budget.usable}.",
                    hint=f"Use at most {budget.safe_threads} threads per process (ASGI_THREADS or "
                    f"{label('MAX_THREADS')}), fewer processes, or PgBouncer; "
                    "`manage.py threadgov budget` shows the arithmetic.",
                )
            )

    if databases:
        from django.db import connections

        seen = set()
        for alias in databases:
            conf = server_aliases.get(alias)
            if conf is None or connections[alias].vendor != "postgresql":
                continue
            key = _server_key(conf)
            if key in seen:
                continue
            seen.add(key)
            sharing = [a for a, c in server_aliases.items() if _server_key(c) == key]
            connection = connections[alias]
            was_open = connection.connection is not None
            try:
                limits = _budget.server_limits(connection)
            except Exception as exc:  # unreachable server, no permission, ...
                warnings.append(
                    _like(
                        W004,
                        f"threadgov could not read max_connections from the server of database "
                        f"{alias!r}: {' '.join(str(exc).split()) or type(exc).__name__}",
                        hint="Check that the server is reachable, or run the check without --database.",
                    )
                )
                continue
            finally:
                if not was_open:
                    connection.close()
            budget = _budget.plan(
                limits.max_connections,
                reserved=config.reserved_connections,
                server_reserved=limits.server_reserved,
                processes=config.worker_processes,
                aliases=len(sharing),
                threads=n,
            )
            if not budget.fits:
                reserved = f" - {limits.superuser_reserved} superuser_reserved_connections"
                if limits.reserved:
                    reserved += f" - {limits.reserved} reserved_connections"
                if config.reserved_connections:
                    reserved += f" - {config.reserved_connections} {label('RESERVED_CONNECTIONS')}"
                warnings.append(
                    _like(
                        W002,
                        f"threadgov may open {budget.demand} connections to the server of database "
                        f"{alias!r}: N={n} threads ({config.size.source}) x {_processes_text(config)} "
                        f"x {len(sharing)} alias{'es' if len(sharing) != 1 else ''} on that server "
                        f"({', '.join(sharing)}), more than its max_connections {limits.max_connections}"
                        f"{reserved} = {budget.usable}.",
                        hint=f"Use at most {budget.safe_threads} threads per process (ASGI_THREADS or "
                        f"{label('MAX_THREADS')}), fewer processes, raise max_connections, or put "
                        "PgBouncer (transaction pooling) in front of the server.",
                    )
                )
    return warnings


@register(TAG)
def check_persistent_connections(app_configs=None, **kwargs) -> List[Warning]:
    """W003: ``CONN_MAX_AGE = 0`` on a server database while the governor is configured."""
    if not governed():
        return []
    config, _ = _config()
    if config is not None and not config.options.close_connections:
        return []  # the governor does not manage connections at all
    warnings = []
    for alias, conf in _server_aliases().items():
        if conf.get("CONN_MAX_AGE", 0) == 0:
            warnings.append(
                _like(
                    W003,
                    f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is 0: every governed call opens and closes "
                    "its own database session, so threadgov bounds how many are open at once but "
                    "cannot reuse them.",
                )
            )
    return warnings
