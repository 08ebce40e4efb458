"""How the configuration is resolved from install() arguments, the environment, THREADGOV, defaults."""

import pytest

from threadgov._config import KEYS, label, resolve_config, resolve_or_raise, summary
from threadgov._errors import ConfigurationError
from threadgov._options import Options


def resolve(setting=None, environ=None, explicit=None, cpus=2):
    return resolve_config(explicit, environ=environ or {}, setting=setting, cpus=cpus)


def test_defaults_without_any_source():
    config, problems = resolve()
    assert problems == []
    assert config.size.size == 6 and config.size.source == "default (python>=3.8, 2 cpus)"
    assert config.options == Options()
    assert (config.metrics, config.install, config.worker_processes) == (False, True, 1)
    assert (config.max_connections, config.reserved_connections) == (None, 0)
    assert not config.setting_present
    assert all(source == "default" for name, source in config.sources.items() if name != "max_threads")


def test_setting_is_used_when_nothing_overrides_it():
    setting = {
        "MAX_THREADS": 12, "AFFINITY": "call", "CLOSE_CONNECTIONS": False, "MAX_QUEUE": 50,
        "QUEUE_TIMEOUT": 2, "SLOW_CALL_THRESHOLD": 1.5, "METRICS": True, "WORKER_PROCESSES": 4,
        "MAX_CONNECTIONS": 100, "RESERVED_CONNECTIONS": 10, "INSTALL": False,
    }
    assert set(setting) == set(KEYS)
    config, problems = resolve(setting)
    assert problems == []
    assert config.size == (12, 'THREADGOV["MAX_THREADS"]')
    assert config.options == Options("call", False, 50, 2.0, 1.5)
    assert (config.metrics, config.install, config.worker_processes) == (True, False, 4)
    assert (config.max_connections, config.reserved_connections) == (100, 10)
    for key in KEYS:
        assert config.sources[key.lower()] == label(key)


def test_environment_wins_over_setting_for_every_option_that_has_a_variable():
    setting = {"MAX_THREADS": 12, "MAX_QUEUE": 50, "QUEUE_TIMEOUT": 2, "SLOW_CALL_THRESHOLD": 1.5,
               "WORKER_PROCESSES": 4}
    environ = {"ASGI_THREADS": "8", "THREADGOV_MAX_QUEUE": "7", "THREADGOV_QUEUE_TIMEOUT": "0.5",
               "THREADGOV_SLOW_CALL": "3", "WEB_CONCURRENCY": "2"}
    config, problems = resolve(setting, environ)
    assert problems == []
    assert config.size == (8, "ASGI_THREADS")
    assert (config.options.max_queue, config.options.queue_timeout, config.options.slow_call_threshold) == (7, 0.5, 3.0)
    assert config.worker_processes == 2
    assert config.sources == {
        "max_threads": "ASGI_THREADS", "max_queue": "THREADGOV_MAX_QUEUE",
        "queue_timeout": "THREADGOV_QUEUE_TIMEOUT", "slow_call_threshold": "THREADGOV_SLOW_CALL",
        "worker_processes": "WEB_CONCURRENCY", "affinity": "default", "close_connections": "default",
        "metrics": "default", "install": "default", "max_connections": "default",
        "reserved_connections": "default",
    }


def test_explicit_arguments_win_over_environment_and_setting():
    setting = {"MAX_THREADS": 12, "AFFINITY": "call", "MAX_QUEUE": 50}
    environ = {"ASGI_THREADS": "8", "THREADGOV_MAX_QUEUE": "7"}
    config, problems = resolve(setting, environ, {"max_threads": 3, "affinity": "request", "max_queue": 1})
    assert problems == []
    assert config.size == (3, "max_threads argument")
    assert (config.options.affinity, config.options.max_queue) == ("request", 1)
    assert config.sources["affinity"] == "affinity argument"
    # None means "not given", as in install(): the next source decides.
    config, _ = resolve(setting, environ, {"max_threads": None, "max_queue": None})
    assert config.size == (8, "ASGI_THREADS") and config.options.max_queue == 7


def test_none_in_the_setting_means_the_default():
    config, problems = resolve({"MAX_THREADS": None, "MAX_QUEUE": None, "WORKER_PROCESSES": None})
    assert problems == []
    assert config.size.source.startswith("default") and config.options.max_queue is None
    assert config.worker_processes == 1


@pytest.mark.parametrize(
    "key, value",
    [
        ("MAX_THREADS", 0), ("MAX_THREADS", "8"), ("MAX_THREADS", True), ("MAX_THREADS", 5000),
        ("AFFINITY", "thread"), ("AFFINITY", 1), ("CLOSE_CONNECTIONS", "yes"), ("MAX_QUEUE", -1),
        ("MAX_QUEUE", 1.5), ("QUEUE_TIMEOUT", 0), ("QUEUE_TIMEOUT", "2"), ("SLOW_CALL_THRESHOLD", -1),
        ("SLOW_CALL_THRESHOLD", float("nan")), ("METRICS", 1), ("INSTALL", None),
        ("WORKER_PROCESSES", 0), ("MAX_CONNECTIONS", 0), ("RESERVED_CONNECTIONS", -1),
    ],
)
def test_each_invalid_value_is_one_problem_naming_key_value_and_accepted(key, value):
    config, problems = resolve({key: value})
    assert config is None
    assert len(problems) == 1
    problem = problems[0]
    assert problem.kind == "value" and problem.source == label(key)
    assert problem.message.startswith(f'THREADGOV["{key}"]={value!r} is not valid: expected ')
    assert "\n" not in problem.message and problem.hint


def test_a_bad_setting_is_reported_even_when_the_environment_overrides_it():
    config, problems = resolve({"MAX_THREADS": "lots"}, {"ASGI_THREADS": "4"})
    assert config is None and [p.source for p in problems] == ['THREADGOV["MAX_THREADS"]']


@pytest.mark.parametrize(
    "variable, text",
    [("ASGI_THREADS", "abc"), ("THREADGOV_MAX_QUEUE", "-1"), ("THREADGOV_QUEUE_TIMEOUT", "soon"),
     ("THREADGOV_SLOW_CALL", "0"), ("WEB_CONCURRENCY", "four")],
)
def test_each_invalid_environment_variable_is_one_problem_naming_it(variable, text):
    config, problems = resolve(environ={variable: text})
    assert config is None and len(problems) == 1
    assert problems[0].kind == "environment" and problems[0].source == variable
    assert problems[0].message.startswith(f"{variable}={text!r} is not valid: expected ")


def test_unknown_keys_and_a_setting_that_is_not_a_dict():
    config, problems = resolve({"MAX_THEADS": 8, 3: "x", "AFFINITY": "call"})
    assert config is None
    assert [(p.kind, p.source) for p in problems] == [("unknown", 'THREADGOV["MAX_THEADS"]'), ("unknown", "THREADGOV[3]")]
    assert problems[0].message == 'THREADGOV["MAX_THEADS"] is not a threadgov setting'
    assert problems[0].hint.startswith("Did you mean 'MAX_THREADS'? Valid keys: MAX_THREADS, AFFINITY")
    config, problems = resolve(["MAX_THREADS", 8])
    assert config is None and problems[0].kind == "setting"
    assert problems[0].message == "THREADGOV must be a dict, not list"


def test_reserved_connections_must_leave_some():
    config, problems = resolve({"MAX_CONNECTIONS": 10, "RESERVED_CONNECTIONS": 10})
    assert config is None
    assert problems[0].message == (
        'THREADGOV["RESERVED_CONNECTIONS"]=10 is not valid: expected less than THREADGOV["MAX_CONNECTIONS"]=10'
    )


def test_all_problems_at_once_and_a_one_line_summary():
    config, problems = resolve({"MAX_THREADS": 0, "BOGUS": 1}, {"ASGI_THREADS": "x"})
    assert config is None and len(problems) == 3
    line = summary(problems)
    assert "\n" not in line and "(and 2 more problems: run `manage.py check` to see all)" in line
    with pytest.raises(ConfigurationError) as info:
        resolve_or_raise(setting={"AFFINITY": "x"}, environ={})
    assert str(info.value) == "THREADGOV[\"AFFINITY\"]='x' is not valid: expected 'request' or 'call'"
