#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    from django.core.management import execute_from_command_line

    from embeddings_site.env import SettingError
    from embeddings_site.tracing import tracing_start

    try:
        tracing_start(role="manage")  # when OTLP is configured (runserver, commands)
        execute_from_command_line(sys.argv)
    except SettingError as exc:
        # A variable of the environment that does not parse: one line naming it, not a
        # traceback through Django's start-up.
        sys.exit(f"Configuration error: {exc}")


if __name__ == "__main__":
    main()
