#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "embeddings_site.settings")
    from django.core.management import execute_from_command_line

    from embeddings_site.tracing import tracing_start

    tracing_start(role="manage")  # when OTLP is configured (runserver, commands)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
