"""Settings of the served project: PostgreSQL with persistent connections, Channels' in-memory layer."""

import os

APP_NAME = f"{os.environ.get('THREADGOV_TEST_APP_NAME', 'threadgov-servers')}-{os.getpid()}"

DEBUG = False
SECRET_KEY = "test"
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = []
MIDDLEWARE = []
ROOT_URLCONF = "servers.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "test",
        "USER": "postgres",
        "HOST": "127.0.0.1",
        "PORT": "5432",
        # Persistent: each thread that touches the database keeps its connection, so the number of
        # backends shows the number of threads that ran database work.
        "CONN_MAX_AGE": 60,
        "OPTIONS": {"application_name": APP_NAME, "connect_timeout": 5},
    }
}
CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"threadgov": {"handlers": ["stderr"], "level": "WARNING"}},
}
