"""The whole configuration, from every source, for the Django app, the checks and the command line.

Every option is resolved the same way, first match wins:

    explicit ``install()`` argument > environment variable > Django's ``THREADGOV`` setting > default

Options without an environment variable (``AFFINITY``, ``CLOSE_CONNECTIONS``, ``METRICS``,
``INSTALL``, ``MAX_CONNECTIONS``, ``RESERVED_CONNECTIONS``) skip that step.

Every source that is present is validated, including one that a higher source overrides (a bad
``THREADGOV["MAX_THREADS"]`` is reported even while ``ASGI_THREADS`` wins), and every problem is
collected: :func:`resolve_config` returns them all, each as one line, so that the system checks can
report each one and ``AppConfig.ready()`` and the command line can stop at the first.
"""

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ._errors import ConfigurationError
from ._options import (
    AFFINITIES,
    MAX_QUEUE_LIMIT,
    MAX_QUEUE_VAR,
    MAX_SECONDS,
    QUEUE_TIMEOUT_VAR,
    SLOW_CALL_VAR,
    Options,
    check_affinity,
    check_bool,
    check_max_queue,
    check_seconds,
    parse_max_queue,
    parse_seconds,
    resolve_options,
)
from ._sizing import ENV_VAR, MAX_THREADS, Size, check_threads, parse_threads, resolve_size

__all__ = [
    "KEYS",
    "SETTING",
    "WORKERS_VAR",
    "Config",
    "Problem",
    "django_setting",
    "label",
    "resolve_config",
]

SETTING = "THREADGOV"

# Read by gunicorn (its default number of workers) and by the connection budget.
WORKERS_VAR = "WEB_CONCURRENCY"

MAX_PROCESSES = 100_000
MAX_CONNECTIONS_LIMIT = 10_000_000

# THREADGOV key -> what it accepts (the hint of an invalid value).
EXPECTED: Dict[str, str] = {
    "MAX_THREADS": f"None or an int from 1 to {MAX_THREADS}",
    "AFFINITY": " or ".join(repr(a) for a in AFFINITIES),
    "CLOSE_CONNECTIONS": "True or False",
    "MAX_QUEUE": f"None or an int from 0 to {MAX_QUEUE_LIMIT}",
    "QUEUE_TIMEOUT": f"None or seconds (an int or float), more than 0 and at most {MAX_SECONDS:g}",
    "SLOW_CALL_THRESHOLD": (
        f"None or seconds (an int or float), more than 0 and at most {MAX_SECONDS:g}"
    ),
    "METRICS": "True or False",
    "WORKER_PROCESSES": f"None or an int from 1 to {MAX_PROCESSES}",
    "MAX_CONNECTIONS": f"None or an int from 1 to {MAX_CONNECTIONS_LIMIT}",
    "RESERVED_CONNECTIONS": "an int from 0 to MAX_CONNECTIONS - 1",
    "INSTALL": "True or False",
}
KEYS: Tuple[str, ...] = tuple(EXPECTED)

# install() argument -> THREADGOV key, for the options the governor itself takes.
ARGUMENTS = {
    "max_threads": "MAX_THREADS",
    "affinity": "AFFINITY",
    "close_connections": "CLOSE_CONNECTIONS",
    "max_queue": "MAX_QUEUE",
    "queue_timeout": "QUEUE_TIMEOUT",
    "slow_call_threshold": "SLOW_CALL_THRESHOLD",
}

# THREADGOV key -> (environment variable, parser of its text).
ENVIRONMENT = {
    "MAX_THREADS": (ENV_VAR, lambda text: parse_threads(text)),
    "MAX_QUEUE": (MAX_QUEUE_VAR, lambda text: parse_max_queue(text)),
    "QUEUE_TIMEOUT": (QUEUE_TIMEOUT_VAR, lambda text: parse_seconds(text, setting=QUEUE_TIMEOUT_VAR)),
    "SLOW_CALL_THRESHOLD": (SLOW_CALL_VAR, lambda text: parse_seconds(text, setting=SLOW_CALL_VAR)),
    "WORKER_PROCESSES": (WORKERS_VAR, lambda text: _parse_processes(text)),
}


def label(key: str) -> str:
    """How a key of the setting is named in messages: ``THREADGOV["MAX_THREADS"]``."""
    return f'{SETTING}["{key}"]'


@dataclass(frozen=True)
class Problem:
    """One invalid value, in one line, with what would be accepted."""

    kind: str  # "environment", "setting" (not a dict), "unknown" (key), "value" (of a key)
    source: str  # the variable or setting it is about
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Config:
    """Everything resolved; ``sources`` maps each option (lower case) to where its value came from."""

    size: Size
    options: Options
    metrics: bool = False
    install: bool = True
    worker_processes: int = 1
    max_connections: Optional[int] = None
    reserved_connections: int = 0
    sources: Dict[str, str] = field(default_factory=dict)
    setting_present: bool = False  # THREADGOV exists in Django's settings


def _parse_processes(text: str) -> int:
    stripped = text.strip()
    if not stripped.isdigit() or not stripped.isascii() or len(stripped) > 7 or not 1 <= int(stripped) <= MAX_PROCESSES:
        raise ConfigurationError(
            f"{WORKERS_VAR}={text!r} is not valid: expected a whole number from 1 to {MAX_PROCESSES}"
        )
    return int(stripped)


def _check_int(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError("out of range")
    return value


def _optional(check):
    return lambda value: None if value is None else check(value)


# THREADGOV key -> validator of a Python value (raises TypeError or ValueError if invalid).
VALIDATORS = {
    "MAX_THREADS": _optional(lambda v: check_threads(v)),
    "AFFINITY": lambda v: check_affinity(v),
    "CLOSE_CONNECTIONS": lambda v: check_bool(v, setting="close_connections"),
    "MAX_QUEUE": lambda v: check_max_queue(v),
    "QUEUE_TIMEOUT": lambda v: check_seconds(v, setting="queue_timeout"),
    "SLOW_CALL_THRESHOLD": lambda v: check_seconds(v, setting="slow_call_threshold"),
    "METRICS": lambda v: check_bool(v, setting="metrics"),
    "WORKER_PROCESSES": _optional(lambda v: _check_int(v, 1, MAX_PROCESSES)),
    "MAX_CONNECTIONS": _optional(lambda v: _check_int(v, 1, MAX_CONNECTIONS_LIMIT)),
    "RESERVED_CONNECTIONS": lambda v: _check_int(v, 0, MAX_CONNECTIONS_LIMIT - 1),
    "INSTALL": lambda v: check_bool(v, setting="install"),
}

DEFAULTS: Dict[str, Any] = {
    "AFFINITY": "request",
    "CLOSE_CONNECTIONS": True,
    "MAX_QUEUE": None,
    "QUEUE_TIMEOUT": None,
    "SLOW_CALL_THRESHOLD": None,
    "METRICS": False,
    "WORKER_PROCESSES": 1,
    "MAX_CONNECTIONS": None,
    "RESERVED_CONNECTIONS": 0,
    "INSTALL": True,
}

_MISSING = object()


def django_setting() -> Tuple[bool, object]:
    """``(present, value)`` of Django's ``THREADGOV`` setting; absent if Django is not configured."""
    try:
        from django.conf import settings
    except ImportError:  # pragma: no cover - Django is a dependency
        return False, None
    if not settings.configured:
        return False, None
    value = getattr(settings, SETTING, _MISSING)
    return (value is not _MISSING), (None if value is _MISSING else value)


def _unknown_key(key: object) -> Problem:
    close = difflib.get_close_matches(key, KEYS, n=1) if isinstance(key, str) else []
    hint = f"Did you mean {close[0]!r}? " if close else ""
    name = label(key) if isinstance(key, str) else f"{SETTING}[{key!r}]"
    return Problem(
        "unknown", name, f"{name} is not a threadgov setting", hint + "Valid keys: " + ", ".join(KEYS) + "."
    )


def resolve_config(
    explicit: Optional[Mapping[str, object]] = None,
    *,
    environ: Mapping[str, str] = os.environ,
    setting: object = _MISSING,
    cpus: Optional[int] = None,
) -> Tuple[Optional[Config], List[Problem]]:
    """Resolve every option: ``explicit`` install() arguments > ``environ`` > ``setting`` > default.

    ``setting`` is the ``THREADGOV`` dict; by default it is read from Django's settings when they
    are configured. Returns ``(config, [])``, or ``(None, problems)`` if any value is invalid.
    """
    # None means "not given", as in install(): the next source decides.
    explicit = {k: v for k, v in (explicit or {}).items() if v is not None}
    if setting is _MISSING:
        present, setting = django_setting()
    else:
        present = setting is not None
    problems: List[Problem] = []

    values: Dict[str, object] = {}
    if present and not isinstance(setting, dict):
        problems.append(
            Problem(
                "setting",
                SETTING,
                f"{SETTING} must be a dict, not {type(setting).__name__}",
                "Valid keys: " + ", ".join(KEYS) + ".",
            )
        )
    elif present:
        for key, value in setting.items():
            if key not in EXPECTED:
                problems.append(_unknown_key(key))
                continue
            try:
                VALIDATORS[key](value)
            except (TypeError, ValueError):
                problems.append(
                    Problem(
                        "value",
                        label(key),
                        f"{label(key)}={value!r} is not valid: expected {EXPECTED[key]}",
                        f"{label(key)} accepts {EXPECTED[key]}.",
                    )
                )
                continue
            values[key] = value

    from_env: Dict[str, object] = {}
    for key, (variable, parse) in ENVIRONMENT.items():
        if variable in environ:
            try:
                from_env[key] = parse(environ[variable])
            except ConfigurationError as exc:
                problems.append(
                    Problem("environment", variable, str(exc), f"Unset {variable} or fix its value.")
                )

    for argument, key in ARGUMENTS.items():
        if argument in explicit:
            try:
                VALIDATORS[key](explicit[argument])
            except (TypeError, ValueError) as exc:
                problems.append(Problem("value", argument, str(exc) or f"{argument} is not valid"))

    # RESERVED_CONNECTIONS must leave something of MAX_CONNECTIONS.
    max_connections = values.get("MAX_CONNECTIONS")
    reserved = values.get("RESERVED_CONNECTIONS", 0)
    if isinstance(max_connections, int) and isinstance(reserved, int) and reserved >= max_connections:
        problems.append(
            Problem(
                "value",
                label("RESERVED_CONNECTIONS"),
                f"{label('RESERVED_CONNECTIONS')}={reserved!r} is not valid: expected less than "
                f"{label('MAX_CONNECTIONS')}={max_connections!r}",
                "Reserve fewer connections than the server allows in all.",
            )
        )

    if problems:
        return None, problems

    sources: Dict[str, str] = {}

    def pick(key: str, argument: Optional[str] = None) -> object:
        if argument is not None and argument in explicit:
            sources[key.lower()] = f"{argument} argument"
            return explicit[argument]
        if key in from_env:
            sources[key.lower()] = ENVIRONMENT[key][0]
            return from_env[key]
        if key in values and values[key] is not None:
            sources[key.lower()] = label(key)
            return values[key]
        sources[key.lower()] = "default"
        return DEFAULTS.get(key)

    # Size: resolve_size applies the same order and names the source itself.
    size = resolve_size(
        explicit.get("max_threads"),
        environ={ENV_VAR: environ[ENV_VAR]} if ENV_VAR in environ else {},
        cpus=cpus,
        setting=(values.get("MAX_THREADS"), label("MAX_THREADS")),
    )
    sources["max_threads"] = size.source
    option_values = {argument: pick(key, argument) for argument, key in ARGUMENTS.items() if argument != "max_threads"}
    options = resolve_options(environ={}, **option_values)
    return (
        Config(
            size=size,
            options=options,
            metrics=pick("METRICS"),
            install=pick("INSTALL"),
            worker_processes=pick("WORKER_PROCESSES"),
            max_connections=pick("MAX_CONNECTIONS"),
            reserved_connections=pick("RESERVED_CONNECTIONS"),
            sources=sources,
            setting_present=present,
        ),
        [],
    )


def resolve_or_raise(
    explicit: Optional[Mapping[str, object]] = None,
    *,
    environ: Mapping[str, str] = os.environ,
    setting: object = _MISSING,
) -> Config:
    """:func:`resolve_config`, raising ``ConfigurationError`` with the first problem's line."""
    config, problems = resolve_config(explicit, environ=environ, setting=setting)
    if problems:
        raise ConfigurationError(summary(problems))
    return config


def summary(problems: List[Problem]) -> str:
    """The first problem in one line, with a count of the others."""
    line = problems[0].message
    if len(problems) > 1:
        more = len(problems) - 1
        line += f" (and {more} more problem{'s' if more > 1 else ''}: run `manage.py check` to see all)"
    return line
