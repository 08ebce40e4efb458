"""gunicorn settings for the multi-process metrics test (and the README's recipe)."""

from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)

# gunicorn 23+: no control socket in the home directory (ignored by older versions).
control_socket_disable = True
