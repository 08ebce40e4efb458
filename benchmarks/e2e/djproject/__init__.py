"""The Django project served by the end-to-end benchmark (also its only app: the ``Item`` model)."""
