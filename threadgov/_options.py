"""The governor's options besides its size: validation and environment variables.

Each option is an ``install()`` argument, else its environment variable, else off (None).
"""

import math
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from ._errors import ConfigurationError
from ._sizing import parse_whole

__all__ = ["AFFINITIES", "Options", "resolve_options"]

# "request": a ThreadSensitiveContext (a Django request) keeps its worker until it exits.
# "call": a worker is held only while one of the context's calls runs.
AFFINITIES = ("request", "call")

MAX_QUEUE_VAR = "THREADGOV_MAX_QUEUE"
QUEUE_TIMEOUT_VAR = "THREADGOV_QUEUE_TIMEOUT"
SLOW_CALL_VAR = "THREADGOV_SLOW_CALL"

# Upper bounds, so that a typo (an extra zero or two) fails loudly instead of disabling a limit.
MAX_QUEUE_LIMIT = 1_000_000
MAX_SECONDS = 86_400.0

_DECIMAL = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")


@dataclass(frozen=True)
class Options:
    affinity: str = "request"
    close_connections: bool = True
    max_queue: Optional[int] = None
    queue_timeout: Optional[float] = None
    slow_call_threshold: Optional[float] = None


def check_affinity(value: object, *, setting: str = "affinity") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{setting} must be a str, not {type(value).__name__}")
    if value not in AFFINITIES:
        accepted = " or ".join(repr(a) for a in AFFINITIES)
        raise ConfigurationError(f"{setting}={value!r} is not valid: expected {accepted}")
    return value


def check_bool(value: object, *, setting: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{setting} must be a bool, not {type(value).__name__}")
    return value


def check_max_queue(value: object, *, setting: str = "max_queue") -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{setting} must be an int or None, not {type(value).__name__}")
    if not 0 <= value <= MAX_QUEUE_LIMIT:
        raise ConfigurationError(
            f"{setting}={value!r} is not valid: expected a whole number from 0 to {MAX_QUEUE_LIMIT}"
        )
    return value


def check_seconds(value: object, *, setting: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{setting} must be a number of seconds or None, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
        raise ConfigurationError(
            f"{setting}={value!r} is not valid: expected seconds, more than 0 and at most {MAX_SECONDS:g}"
        )
    return float(value)


def parse_max_queue(text: str, *, setting: str = MAX_QUEUE_VAR) -> int:
    return parse_whole(text, setting=setting, low=0, high=MAX_QUEUE_LIMIT)


def parse_seconds(text: str, *, setting: str) -> float:
    stripped = text.strip()
    if not _DECIMAL.fullmatch(stripped) or len(stripped) > 32 or not 0 < float(stripped) <= MAX_SECONDS:
        raise ConfigurationError(
            f"{setting}={text!r} is not valid: expected seconds (e.g. 2.5), more than 0 and at most "
            f"{MAX_SECONDS:g}"
        )
    return float(stripped)


def resolve_options(
    *,
    affinity: str = "request",
    close_connections: bool = True,
    max_queue: Optional[int] = None,
    queue_timeout: Optional[float] = None,
    slow_call_threshold: Optional[float] = None,
    environ: Mapping[str, str] = os.environ,
) -> Options:
    """Validate ``install()``'s options; unset limits come from their environment variables."""
    if max_queue is None and MAX_QUEUE_VAR in environ:
        max_queue = parse_max_queue(environ[MAX_QUEUE_VAR])
    if queue_timeout is None and QUEUE_TIMEOUT_VAR in environ:
        queue_timeout = parse_seconds(environ[QUEUE_TIMEOUT_VAR], setting=QUEUE_TIMEOUT_VAR)
    if slow_call_threshold is None and SLOW_CALL_VAR in environ:
        slow_call_threshold = parse_seconds(environ[SLOW_CALL_VAR], setting=SLOW_CALL_VAR)
    return Options(
        affinity=check_affinity(affinity),
        close_connections=check_bool(close_connections, setting="close_connections"),
        max_queue=check_max_queue(max_queue),
        queue_timeout=check_seconds(queue_timeout, setting="queue_timeout"),
        slow_call_threshold=check_seconds(slow_call_threshold, setting="slow_call_threshold"),
    )
