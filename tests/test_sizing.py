"""Pool sizing (``threadgov._sizing``) and the validation ``threadgov.install()`` does up front."""

import os

import pytest

import threadgov
from threadgov import _sizing
from threadgov._sizing import (
    ENV_VAR,
    MAX_THREADS,
    Size,
    available_cpus,
    check_threads,
    default_size,
    parse_threads,
    resolve_size,
)

ACCEPTED = f"1 to {MAX_THREADS}"

BAD_ENV_VALUES = [
    "abc",
    "0",
    "-3",
    "1.5",
    "",
    "1e3",
    "   ",
    "+8",
    "1_000",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: str.isdigit() and int() accept it, we must not
    str(MAX_THREADS + 1),
    "99999999999999999999",
]

@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    """No ASGI_THREADS from the outside, and never a governor left installed after a test."""
    monkeypatch.delenv(ENV_VAR, raising=False)
    threadgov.uninstall()
    yield
    assert threadgov.uninstall(timeout=10) is True


def assert_not_installed():
    with pytest.raises(threadgov.NotInstalledError):
        threadgov.stats()


def assert_env_message(message, value):
    assert "\n" not in message
    assert ENV_VAR in message
    assert repr(value) in message
    assert ACCEPTED in message


# -- the exception tree ---------------------------------------------------------------------------


def test_error_classes():
    assert issubclass(threadgov.ConfigurationError, threadgov.ThreadgovError)
    assert issubclass(threadgov.ConfigurationError, ValueError)
    assert issubclass(threadgov.NotInstalledError, threadgov.ThreadgovError)
    assert issubclass(threadgov.NotInstalledError, RuntimeError)
    assert threadgov.MAX_THREADS == MAX_THREADS == 1024


# -- ASGI_THREADS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", BAD_ENV_VALUES)
def test_bad_env_value_is_rejected(value):
    with pytest.raises(threadgov.ConfigurationError) as info:
        resolve_size(environ={ENV_VAR: value})
    assert isinstance(info.value, ValueError)
    assert_env_message(str(info.value), value)


@pytest.mark.parametrize("value", BAD_ENV_VALUES)
def test_bad_env_value_is_rejected_by_install(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(threadgov.ConfigurationError) as info:
        threadgov.install()
    assert_env_message(str(info.value), value)
    assert_not_installed()


@pytest.mark.parametrize("value", ["1" * 5000, "0" * 5000 + "8"], ids=["5000 ones", "zeros then 8"])
def test_huge_digit_string(value):
    try:
        size = resolve_size(environ={ENV_VAR: value})
    except threadgov.ConfigurationError as exc:
        assert_env_message(str(exc), value)
    except ValueError as exc:
        raise AssertionError(f"plain ValueError: {exc}") from None
    else:
        # Leading zeros may be accepted; a number out of range may not.
        assert value.lstrip("0") == "8" and size == Size(8, ENV_VAR)


@pytest.mark.parametrize(
    "value, size",
    [(" 8 ", 8), ("\t8\n", 8), ("1", 1), ("08", 8), (str(MAX_THREADS), MAX_THREADS)],
)
def test_good_env_value(value, size):
    assert resolve_size(environ={ENV_VAR: value}) == Size(size, ENV_VAR)


def test_env_value_through_install(monkeypatch):
    monkeypatch.setenv(ENV_VAR, " 3 ")
    threadgov.install()
    stats = threadgov.stats()
    assert (stats.size, stats.source) == (3, ENV_VAR)


def test_parse_threads_names_its_setting():
    with pytest.raises(threadgov.ConfigurationError, match=r"^WEB_THREADS='x' is not valid"):
        parse_threads("x", setting="WEB_THREADS")
    assert parse_threads("12") == 12


# -- the default (no argument, no ASGI_THREADS) ---------------------------------------------------


@pytest.mark.parametrize(
    "python_version, cpus, size, source",
    [
        ((3, 7), 2, 10, "default (python<=3.7, 2 cpus)"),
        ((3, 7, 16, "final", 0), 1, 5, "default (python<=3.7, 1 cpu)"),
        ((3, 6), 8, 40, "default (python<=3.7, 8 cpus)"),
        ((3, 8), 2, 6, "default (python>=3.8, 2 cpus)"),
        ((3, 11), 2, 6, "default (python>=3.8, 2 cpus)"),
        ((3, 11), 1, 5, "default (python>=3.8, 1 cpu)"),
        ((3, 11), 27, 31, "default (python>=3.8, 27 cpus)"),
        ((3, 11), 28, 32, "default (python>=3.8, 28 cpus)"),
        ((3, 11), 40, 32, "default (python>=3.8, 40 cpus)"),
        ((3, 13, 0), 2, 6, "default (python>=3.8, 2 cpus)"),
    ],
)
def test_default_size(python_version, cpus, size, source):
    assert resolve_size(environ={}, python_version=python_version, cpus=cpus) == Size(size, source)
    assert default_size(cpus, python_version) == size


def test_default_on_this_machine():
    cpus = available_cpus()
    assert 1 <= cpus <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cpus <= len(os.sched_getaffinity(0))
    assert resolve_size(environ={}).size == min(32, cpus + 4)
    assert resolve_size(environ={}).source.startswith("default (python>=3.8, ")


def test_default_uses_available_cpus(monkeypatch):
    monkeypatch.setattr(_sizing, "available_cpus", lambda: 3)
    assert resolve_size(environ={}, python_version=(3, 12)) == Size(
        7, "default (python>=3.8, 3 cpus)"
    )


def test_default_through_install(monkeypatch):
    monkeypatch.setattr(_sizing, "available_cpus", lambda: 1)
    threadgov.install()
    stats = threadgov.stats()
    assert stats.size == 5
    assert stats.source == "default (python>=3.8, 1 cpu)"


# -- max_threads ----------------------------------------------------------------------------------


def test_max_threads_wins_over_env():
    assert resolve_size(4, environ={ENV_VAR: "8"}) == Size(4, "max_threads argument")
    # ASGI_THREADS is not even read when the argument is given.
    assert resolve_size(4, environ={ENV_VAR: "abc"}) == Size(4, "max_threads argument")


def test_max_threads_wins_over_env_through_install(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "8")
    threadgov.install(max_threads=2)
    stats = threadgov.stats()
    assert (stats.size, stats.source) == (2, "max_threads argument")


@pytest.mark.parametrize("value", [1, 7, MAX_THREADS])
def test_max_threads_accepted(value):
    assert resolve_size(value, environ={}) == Size(value, "max_threads argument")
    assert check_threads(value) == value


@pytest.mark.parametrize("value, type_name", [(True, "bool"), ("4", "str"), (4.0, "float")])
def test_max_threads_wrong_type(value, type_name):
    with pytest.raises(TypeError, match=rf"^max_threads must be an int, not {type_name}$"):
        resolve_size(value, environ={})
    with pytest.raises(TypeError):
        threadgov.install(max_threads=value)
    assert_not_installed()


@pytest.mark.parametrize("value", [0, -1, MAX_THREADS + 1])
def test_max_threads_out_of_range(value):
    with pytest.raises(threadgov.ConfigurationError) as info:
        resolve_size(value, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert f"max_threads={value!r}" in message
    assert ACCEPTED in message
    with pytest.raises(threadgov.ConfigurationError):
        threadgov.install(max_threads=value)
    assert_not_installed()


# -- CPUs: affinity, cgroup v2 quota, fallbacks ---------------------------------------------------


def test_affinity_cpus_on_this_machine():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no os.sched_getaffinity on this platform")
    assert _sizing._affinity_cpus() == len(os.sched_getaffinity(0))


def test_affinity_cpus_falls_back_to_psutil(monkeypatch):
    psutil = pytest.importorskip("psutil")

    def refuse(pid):
        raise OSError("no affinity here")

    monkeypatch.setattr(os, "sched_getaffinity", refuse, raising=False)
    monkeypatch.setattr(psutil.Process, "cpu_affinity", lambda self: [0, 1, 2], raising=False)
    assert _sizing._affinity_cpus() == 3


def test_affinity_cpus_none_when_unknown(monkeypatch):
    psutil = pytest.importorskip("psutil")

    def refuse(*args):
        raise OSError("no affinity here")

    monkeypatch.setattr(os, "sched_getaffinity", refuse, raising=False)
    monkeypatch.setattr(psutil.Process, "cpu_affinity", refuse, raising=False)
    assert _sizing._affinity_cpus() is None


@pytest.mark.parametrize(
    "affinity, quota, cpu_count, expected",
    [
        (8, 3, 16, 3),
        (2, 6, 16, 2),
        (None, 3, 16, 3),
        (4, None, 16, 4),
        (None, None, 7, 7),
        (None, None, None, 1),
    ],
)
def test_available_cpus(monkeypatch, affinity, quota, cpu_count, expected):
    monkeypatch.setattr(_sizing, "_affinity_cpus", lambda: affinity)
    monkeypatch.setattr(_sizing, "_cgroup_v2_cpus", lambda *args, **kwargs: quota)
    monkeypatch.setattr(os, "cpu_count", lambda: cpu_count)
    assert available_cpus() == expected


def make_cgroup(tmp_path, path, quotas, proc_lines=None):
    """A fake cgroup v2 tree under tmp_path/cg and a fake /proc/self/cgroup naming ``path``.

    ``quotas`` maps a directory relative to the cgroup root ("" for the root) to the text of its
    ``cpu.max``.
    """
    root = tmp_path / "cg"
    (root / path.strip("/")).mkdir(parents=True, exist_ok=True)
    for directory, text in quotas.items():
        target = root / directory
        target.mkdir(parents=True, exist_ok=True)
        (target / "cpu.max").write_text(text)
    proc = tmp_path / "proc_self_cgroup"
    lines = proc_lines if proc_lines is not None else [f"0::{path}"]
    proc.write_text("".join(line + "\n" for line in lines))
    return str(root), str(proc)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max 100000\n", None),
        ("150000 100000\n", 2),
        ("200000 100000\n", 2),
        ("50000 100000\n", 1),  # half a CPU still counts as one
        ("1000 100000\n", 1),
        ("250000 100000\n", 3),
    ],
)
def test_cgroup_quota(tmp_path, text, expected):
    root, proc = make_cgroup(tmp_path, "/app", {"app": text})
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) == expected


def test_cgroup_quota_at_namespace_root(tmp_path):
    root, proc = make_cgroup(tmp_path, "/", {"": "300000 100000"})
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) == 3


@pytest.mark.parametrize(
    "quotas, expected",
    [
        # The parent's quota is tighter than the leaf's: it applies.
        ({"": "max 100000", "a": "100000 100000", "a/b": "400000 100000"}, 1),
        # The leaf is the tighter one.
        ({"a": "800000 100000", "a/b": "200000 100000"}, 2),
        # Only a grandparent has a quota.
        ({"": "300000 100000", "a": "max 100000", "a/b": "max 100000"}, 3),
        # No quota anywhere.
        ({"": "max 100000", "a": "max 100000", "a/b": "max 100000"}, None),
        # No cpu.max files at all.
        ({}, None),
    ],
)
def test_cgroup_nested_quotas(tmp_path, quotas, expected):
    root, proc = make_cgroup(tmp_path, "/a/b", quotas)
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) == expected


@pytest.mark.parametrize("bad", ["", "\n", "garbage", "abc 100000", "100000 abc", "100000 0", "1.5 1"])
def test_cgroup_malformed_file_is_ignored(tmp_path, bad):
    root, proc = make_cgroup(tmp_path, "/a/b", {"a/b": bad})
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) is None
    # ... and a valid quota further up still applies.
    root, proc = make_cgroup(tmp_path, "/a/b", {"a": "200000 100000", "a/b": bad})
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) == 2


@pytest.mark.parametrize(
    "proc_lines",
    [
        [],  # empty file
        ["12:cpu,cpuacct:/a/b", "1:name=systemd:/a/b"],  # cgroup v1 only
    ],
)
def test_cgroup_without_v2_entry(tmp_path, proc_lines):
    root, proc = make_cgroup(tmp_path, "/a/b", {"a/b": "100000 100000"}, proc_lines)
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) is None


def test_cgroup_hybrid_hierarchy_uses_the_v2_line(tmp_path):
    lines = ["4:memory:/elsewhere", "1:cpu:/elsewhere", "0::/a/b"]
    root, proc = make_cgroup(tmp_path, "/a/b", {"a/b": "200000 100000"}, lines)
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=proc) == 2


def test_cgroup_missing_proc_file(tmp_path):
    root, _ = make_cgroup(tmp_path, "/", {"": "100000 100000"})
    missing = str(tmp_path / "no-such-file")
    assert _sizing._cgroup_v2_cpus(root=root, proc_cgroup=missing) is None


def test_cgroup_quota_of_this_process_under_a_fake_root(tmp_path):
    """Works without the refactor: mirrors this process's real cgroup v2 path under tmp_path."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        pytest.skip("no /proc/self/cgroup")
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        pytest.skip("no cgroup v2 entry in /proc/self/cgroup")
    leaf = tmp_path.joinpath(*[p for p in path.split("/") if p])
    leaf.mkdir(parents=True, exist_ok=True)
    assert _sizing._cgroup_v2_cpus(root=str(tmp_path)) is None
    (leaf / "cpu.max").write_text("150000 100000\n")
    assert _sizing._cgroup_v2_cpus(root=str(tmp_path)) == 2
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert _sizing._cgroup_v2_cpus(root=str(tmp_path)) == 1
    (leaf / "cpu.max").write_text("max 100000\n")
    (tmp_path / "cpu.max").write_text("not a quota\n")
    assert _sizing._cgroup_v2_cpus(root=str(tmp_path)) is None


def test_cgroup_missing_root(tmp_path):
    assert _sizing._cgroup_v2_cpus(root=str(tmp_path / "absent")) is None


# -- install(): affinity and idempotence ----------------------------------------------------------


def test_install_bad_affinity_value():
    with pytest.raises(threadgov.ConfigurationError) as info:
        threadgov.install(max_threads=2, affinity="thread")
    message = str(info.value)
    assert "\n" not in message
    assert "affinity" in message
    assert "'thread'" in message
    assert "'request'" in message and "'call'" in message
    assert_not_installed()


def test_install_bad_affinity_type():
    with pytest.raises(TypeError, match="affinity"):
        threadgov.install(max_threads=2, affinity=1)
    assert_not_installed()


def test_install_bad_close_connections_type():
    with pytest.raises(TypeError, match="close_connections"):
        threadgov.install(max_threads=2, close_connections=1)
    assert_not_installed()


@pytest.mark.parametrize("affinity", ["request", "call"])
def test_install_affinity(affinity):
    threadgov.install(max_threads=2, affinity=affinity)
    assert threadgov.stats().affinity == affinity


def test_install_is_idempotent():
    threadgov.install(max_threads=3)
    first = threadgov.stats()
    threadgov.install(max_threads=3)
    second = threadgov.stats()
    assert first.size == second.size == 3
    assert second.source == "max_threads argument"


def test_install_with_other_settings_refused():
    threadgov.install(max_threads=3)
    with pytest.raises(threadgov.ConfigurationError) as info:
        threadgov.install(max_threads=4)
    message = str(info.value)
    assert "\n" not in message
    assert "uninstall" in message
    assert "max_threads=3" in message
    with pytest.raises(threadgov.ConfigurationError, match="uninstall"):
        threadgov.install(max_threads=3, affinity="call")
    with pytest.raises(threadgov.ConfigurationError, match="uninstall"):
        threadgov.install(max_threads=3, close_connections=False)
    # The first governor is untouched.
    assert threadgov.stats().size == 3
    assert threadgov.stats().affinity == "request"


def test_reinstall_after_uninstall():
    threadgov.install(max_threads=3)
    assert threadgov.uninstall() is True
    assert_not_installed()
    threadgov.install(max_threads=4)
    assert threadgov.stats().size == 4


def test_uninstall_when_not_installed():
    assert threadgov.uninstall() is True
    assert threadgov.uninstall(timeout=None) is True
    assert_not_installed()


def test_stats_not_installed_message():
    with pytest.raises(threadgov.NotInstalledError, match=r"threadgov\.install\(\)"):
        threadgov.stats()
