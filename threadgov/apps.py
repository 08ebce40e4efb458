"""The ``threadgov`` Django app: add ``"threadgov"`` to ``INSTALLED_APPS`` and the governor is
installed at start-up, configured by the ``THREADGOV`` setting (see README.rst, "Django app and
settings").
"""

import logging
import sys

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured

__all__ = ["ThreadgovConfig"]

logger = logging.getLogger("threadgov")


def in_management_command() -> bool:
    """Whether ``django.setup()`` is running for ``manage.py`` / ``django-admin`` (whose system
    checks report configuration errors, with hints, before almost every command runs)."""
    management = sys.modules.get("django.core.management")
    utility = getattr(management, "ManagementUtility", None)
    if utility is None:
        return False
    code = utility.execute.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False


class ThreadgovConfig(AppConfig):
    name = "threadgov"
    label = "threadgov"
    verbose_name = "threadgov"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from ._config import resolve_config, summary

        config, problems = resolve_config()
        if problems:
            message = summary(problems)
            if in_management_command():
                # The system checks report every problem with a hint and stop the command.
                logger.error("threadgov: not installed: %s", message)
                return
            # A server process: refuse to start rather than serve ungoverned.
            raise ImproperlyConfigured(message)
        if config.metrics:
            from . import _metrics

            if not _metrics.available():
                message = (
                    'THREADGOV["METRICS"] is True but prometheus_client is not installed: '
                    "pip install 'threadgov[metrics]'"
                )
                if in_management_command():
                    logger.error("threadgov: %s", message)
                else:
                    raise ImproperlyConfigured(message)
            elif not (_metrics.multiprocess_dir() and in_management_command()):
                # (A management command serves no metrics; in multiprocess mode it would leave
                # files of its own in the directory. metrics_view still enables them on demand.)
                _metrics.enable()
        if config.install:
            self._install(config)

    @staticmethod
    def _install(config) -> None:
        from ._governor import current, install_resolved

        governor = current()
        if governor is not None:
            # install() ran before django.setup(): an explicit call wins over the settings.
            if (governor.size.size, governor.options) != (config.size.size, config.options):
                logger.info(
                    "threadgov: already installed by install() (max_threads=%d, %s); "
                    "the THREADGOV settings (max_threads=%d from %s) are not applied",
                    governor.size.size,
                    governor.options,
                    config.size.size,
                    config.size.source,
                )
            return
        install_resolved(config.size, config.options)
