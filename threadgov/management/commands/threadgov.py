"""``manage.py threadgov config|budget|stats``: the ``python -m threadgov`` tools, with the project's
settings (``THREADGOV``, ``DATABASES``) loaded."""

import argparse

from django.core.management.base import BaseCommand, CommandError, CommandParser

from threadgov.__main__ import CommandFailed, add_subcommands


class _Parser(CommandParser):
    """Bad input in one line and exit status 2, as ``python -m threadgov`` (no usage dump)."""

    def error(self, message):
        if self.called_from_command_line:
            self.exit(2, f"{self.prog}: error: {message}\n")
        raise CommandError(f"Error: {message}", returncode=2)


class _Reporter:
    """Stands in for the parser in handlers, which report late bad input with ``parser.error``."""

    def __init__(self, prog: str):
        self.prog = prog

    def error(self, message):
        raise CommandError(message, returncode=2)


class Command(BaseCommand):
    help = (
        "threadgov's tools: `config` (the resolved pool size and options and their sources), "
        "`budget` (the safe threads per process for the database's connections), "
        "`stats --url URL` (a running server's statistics)."
    )
    # The configuration is what `config` shows, invalid or not: it reports problems itself.
    requires_system_checks = []

    def add_arguments(self, parser):
        # Before the subparsers exist: CommandParser.add_subparsers gives them the parser's class.
        parser.__class__ = _Parser
        subparsers = parser.add_subparsers(dest="tool", metavar="TOOL", required=True)
        add_subcommands(subparsers, django=True)

    def handle(self, *args, **options):
        handler = options.pop("handler")
        parser = options.pop("parser")
        options.update(stdout=self.stdout, stderr=self.stderr)
        namespace = argparse.Namespace(**options)
        try:
            handler(namespace, _Reporter(parser.prog))
        except CommandFailed as exc:
            raise CommandError(str(exc), returncode=exc.code) from None
