"""End-to-end benchmark: a small Django project served by uvicorn/gunicorn and driven by wrk.

Run from the repository root with ``python -m benchmarks.e2e --help`` (see benchmarks/README.rst).
"""
