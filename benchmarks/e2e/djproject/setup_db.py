"""Create and seed the benchmark table (idempotent): ``python -m benchmarks.e2e.djproject.setup_db``."""

import os
import sys

ROWS = 20


def main() -> int:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.e2e.djproject.settings")
    import django

    django.setup()
    from django.db import connection

    from .models import Item

    tables = connection.introspection.table_names()
    with connection.schema_editor() as editor:
        if Item._meta.db_table in tables:
            editor.delete_model(Item)
        editor.create_model(Item)
    Item.objects.bulk_create(Item(name=f"item-{i}", value=i) for i in range(ROWS))
    print(f"seeded {Item.objects.count()} rows into {Item._meta.db_table} ({connection.vendor})")
    connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
