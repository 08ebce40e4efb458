import threading

from django.apps import AppConfig
from django.db.backends.signals import connection_created

# Every database connection this process opens (Django's connection_created signal): the exact
# number of DB sessions the server started, whoever else uses the database.
_lock = threading.Lock()
_count = 0


def _on_connection_created(sender, connection, **kwargs):
    global _count
    with _lock:
        _count += 1


def connections_opened() -> int:
    with _lock:
        return _count


class BenchConfig(AppConfig):
    name = "benchmarks.e2e.djproject"
    label = "djproject"
    default = True

    def ready(self):
        connection_created.connect(_on_connection_created, dispatch_uid="threadgov-e2e-count")
