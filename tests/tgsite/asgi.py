import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tgsite.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

# The threadgov app (INSTALLED_APPS) installs the governor in django.setup().
application = get_asgi_application()
