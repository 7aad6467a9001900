"""Bring a database's schema up to date with the Alembic migrations."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url


def script_location() -> str:
    # An installed wheel carries the migrations inside the package; a checkout (or an
    # editable install) has them in alembic/ at the project root.
    packaged = resources.files("evochips").joinpath("_alembic")
    if packaged.is_dir():
        return str(packaged)
    return str(Path(__file__).resolve().parents[2] / "alembic")


def upgrade(database_url: str, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; must not be called from a running event loop.

    Raises OSError at once for an SQLite file in a folder that does not exist, rather than
    letting the driver's connection thread fail (which can print to stderr as it dies).
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        folder = Path(url.database).parent
        if not folder.is_dir():
            raise FileNotFoundError(f"no folder {str(folder)!r} for the SQLite database")
    config = Config()
    config.set_main_option("script_location", script_location())
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)
