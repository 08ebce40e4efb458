import json
import os

SECRET_KEY = "threadgov-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["threadgov"]
MIDDLEWARE = []
ROOT_URLCONF = "tgsite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

if os.environ.get("TGSITE_DB", "sqlite") == "pg":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": "test",
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": os.environ.get("TGSITE_PG_PORT", "5432"),
            "CONN_MAX_AGE": 60,
            "OPTIONS": {"application_name": f"threadgov-tgsite-{os.getpid()}", "connect_timeout": 5},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(os.environ.get("TGSITE_DIR", "."), "tgsite.sqlite3"),
            "CONN_MAX_AGE": 60,
        }
    }

if "TGSITE_THREADGOV" in os.environ:
    THREADGOV = json.loads(os.environ["TGSITE_THREADGOV"])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"threadgov": {"handlers": ["console"], "level": "INFO"}},
}
