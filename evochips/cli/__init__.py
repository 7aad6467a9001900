"""The ``evochips`` command line.

Settings come from the environment and, for anything not set there, from a
``.evochips.env`` file in the current directory (which ``scripts/run`` writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from dotenv import load_dotenv

from evochips.cli.audit import audit
from evochips.cli.chips import chips
from evochips.cli.reconcile import reconcile
from evochips.cli.service import migrate, sandbox, serve

ENV_FILE = ".evochips.env"


@click.group(help="Own the lifecycle of WhatsApp numbers run on Evolution API.")
def cli() -> None:
    pass


cli.add_command(serve)
cli.add_command(sandbox)
cli.add_command(migrate)
cli.add_command(chips)
cli.add_command(audit)
cli.add_command(reconcile)


def main(argv: Sequence[str] | None = None) -> None:
    if Path(ENV_FILE).is_file():
        load_dotenv(ENV_FILE, override=False)
    cli.main(args=list(argv) if argv is not None else None, prog_name="evochips")
