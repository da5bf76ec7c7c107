"""The console script ``influence-cli`` (and ``python -m influence_cli``).

Kept apart from :mod:`influence_cli.cli` so that Ctrl-C at any moment, while the CLI's modules
are still being imported included, ends with one line and exit code 130, never a traceback.
"""

from __future__ import annotations

import sys


def main() -> None:
    try:
        from influence_cli.cli import app

        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
