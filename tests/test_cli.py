"""The ``evochips`` command: settings errors, migrate, and reading chips and history."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import socket
from pathlib import Path

import pytest

from evochips import lifecycle, settings
from evochips.db import Database
from evochips.lifecycle import Facts, Source
from evochips.settings import SettingsError
from evochips.statemachine import Trigger
from tests.chips import given_chip
from tests.conftest import SECRET
from tests.servers import evochips

GOOD = {
    "EVOLUTION_API_URL": "http://127.0.0.1:8080",
    "EVOLUTION_API_KEY": "key",
    "EVOCHIPS_PUBLIC_URL": "http://127.0.0.1:8000",
    "EVOCHIPS_WEBHOOK_SECRET": SECRET,
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"EVOLUTION_API_URL": ""}, "EVOLUTION_API_URL is not set."),
        ({"EVOLUTION_API_URL": "evolution:8080"}, "EVOLUTION_API_URL must be an http"),
        ({"EVOLUTION_API_KEY": " "}, "EVOLUTION_API_KEY is not set."),
        ({"EVOCHIPS_PUBLIC_URL": "ftp://x"}, "EVOCHIPS_PUBLIC_URL must be an http"),
        ({"EVOCHIPS_WEBHOOK_SECRET": "short"}, "EVOCHIPS_WEBHOOK_SECRET must be at least"),
        ({"EVOCHIPS_WEBHOOK_SECRET": "x" * 31 + "/"}, "EVOCHIPS_WEBHOOK_SECRET may hold"),
        ({"EVOCHIPS_DATABASE_URL": "mysql://x/y"}, "EVOCHIPS_DATABASE_URL must start with"),
        ({"EVOCHIPS_DATABASE_URL": "::"}, "EVOCHIPS_DATABASE_URL is not a database URL"),
        ({"EVOLUTION_API_VERSION": "3"}, "EVOLUTION_API_VERSION must be 1 or 2"),
        ({"EVOCHIPS_UNSTABLE_CLEAR_AFTER": "-1"}, "EVOCHIPS_UNSTABLE_CLEAR_AFTER must be a"),
    ],
)
def test_a_bad_setting_is_named_in_one_sentence(change: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings.load({**GOOD, **change})
    assert str(caught.value).startswith(named)
    assert str(caught.value).count(". ") == 0


def test_settings_never_print_secrets() -> None:
    loaded = settings.load({**GOOD, "EVOCHIPS_DATABASE_URL": "postgresql+asyncpg://u:pw@h/db"})
    assert SECRET not in repr(loaded) and "pw" not in repr(loaded)
    assert loaded.webhook_url == "http://127.0.0.1:8000/webhooks/evolution"


def test_serve_refuses_to_start_without_settings(tmp_path: Path) -> None:
    env = {**GOOD, "EVOCHIPS_WEBHOOK_SECRET": "", "EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}
    result = evochips("serve", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "evochips: EVOCHIPS_WEBHOOK_SECRET is not set."


@pytest.mark.parametrize("taken", ["receiver", "sandbox"])
def test_serve_with_the_sandbox_on_a_port_in_use_says_so_in_one_sentence(
    tmp_path: Path, taken: str
) -> None:
    with socket.socket() as squatter, socket.socket() as spare:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        spare.bind(("127.0.0.1", 0))
        busy, free = squatter.getsockname()[1], spare.getsockname()[1]
        receiver, sandbox = (busy, free) if taken == "receiver" else (free, busy)
        spare.close()
        env = {**GOOD, "EVOLUTION_API_URL": f"http://127.0.0.1:{sandbox}",
               "EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}  # fmt: skip
        assert evochips("migrate", env=env).returncode == 0
        result = evochips("serve", "--sandbox", "--port", str(receiver), env=env)
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{busy}, the {taken}'s port" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_then_list_an_empty_fleet(tmp_path: Path) -> None:
    env = {"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}
    migrated = evochips("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    listed = evochips("chips", "list", "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert evochips("migrate", env=env).returncode == 0, "migrating twice is harmless"


def test_unknown_chip_is_a_clear_error(tmp_path: Path) -> None:
    env = {"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}
    evochips("migrate", env=env)
    for command in (["chips", "show", "nope"], ["chips", "history", "nope"]):
        result = evochips(*command, env=env)
        assert result.returncode == 1
        assert "no chip with instance name or id 'nope'" in result.stderr
        assert "Traceback" not in result.stderr


def test_missing_database_is_a_clear_error_and_is_not_created(tmp_path: Path) -> None:
    result = evochips("chips", "list", env={"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: no database at ")
    assert "stop any running evochips first, then run `evochips migrate`" in result.stderr
    assert not (tmp_path / "cli.db").exists()


def test_unmigrated_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cli.db").touch()
    result = evochips("chips", "list", env={"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)})
    assert result.returncode == 1
    assert "database schema missing: run `evochips migrate`" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "cli.db").write_text("not a database\n")
    result = evochips("chips", "list", env={"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)})
    assert result.returncode == 1
    assert "the database file is not an SQLite database" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_to_an_unwritable_place_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing-dir' / 'cli.db'}"
    result = evochips("migrate", env={"EVOCHIPS_DATABASE_URL": url})
    assert result.returncode == 1
    assert result.stderr.startswith("Error: could not migrate the database: ")
    assert "Traceback" not in result.stderr


def test_migrate_to_a_postgresql_database_that_does_not_exist(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/evochips_no_such_database"
    result = evochips("migrate", env={"EVOCHIPS_DATABASE_URL": url})
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"


def test_v1_webhook_url_carries_the_secret_in_the_path() -> None:
    loaded = settings.load(GOOD)
    assert loaded.headerless_webhook_url == (f"http://127.0.0.1:8000/webhooks/evolution/k/{SECRET}")


@pytest.mark.parametrize(
    "keys", ["short", "key-ok-0123456789abcdefghij,tiny", "key with spaces 0123456789abc\t"]
)
def test_a_bad_api_key_is_named_by_position(keys: str) -> None:
    with pytest.raises(SettingsError) as caught:
        settings.load({**GOOD, "EVOCHIPS_API_KEYS": keys})
    assert str(caught.value).startswith("EVOCHIPS_API_KEYS: key ")


def test_api_keys_are_read_comma_separated() -> None:
    keys = " key-a-0123456789abcdefghij, ,key-b-0123456789abcdefghij"
    loaded = settings.load({**GOOD, "EVOCHIPS_API_KEYS": keys})
    assert loaded.api_keys == ("key-a-0123456789abcdefghij", "key-b-0123456789abcdefghij")
    assert settings.load(GOOD).api_keys == ()


async def test_audit_export_streams_jsonl_and_csv_and_continues_after_an_id(
    db: Database, database_url: str
) -> None:
    first = await given_chip(db, "chip-01", "warming", "open")
    await given_chip(db, "chip-02", "pending", "close")
    env = {"EVOCHIPS_DATABASE_URL": database_url}

    exported = await asyncio.to_thread(evochips, "audit", "export", env=env)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(row["chip_id"], row["trigger"]) for row in rows] == [
        (first.id, "registered"),
        (first.id, "connected"),
        (rows[2]["chip_id"], "registered"),
    ]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)

    await lifecycle.fire(db, first.id, Trigger.PROMOTE, Source.COMMAND)
    later = await asyncio.to_thread(
        evochips, "audit", "export", "--after-id", str(rows[-1]["id"]), "--format", "csv", env=env
    )
    table = list(csv.DictReader(io.StringIO(later.stdout)))
    assert [(row["trigger"], row["to_status"]) for row in table] == [("promote", "ready")]

    only = await asyncio.to_thread(
        evochips, "audit", "export", "--trigger", "connected", "--since", "2000-01-01", env=env
    )
    assert [json.loads(line)["trigger"] for line in only.stdout.splitlines()] == ["connected"]
    bad = await asyncio.to_thread(evochips, "audit", "export", "--since", "yesterday", env=env)
    assert bad.returncode == 2 and "--since" in bad.stderr


async def test_chips_show_and_list_name_a_chips_flags(db: Database, database_url: str) -> None:
    chip = await given_chip(db, "chip-01", "pending", "close")
    await lifecycle.flag_misconfigured(db, chip.id, "the instance's integration is 'EVOLUTION'")
    env = {"EVOCHIPS_DATABASE_URL": database_url}

    shown = await asyncio.to_thread(evochips, "chips", "show", "chip-01", "--json", env=env)
    listed = await asyncio.to_thread(evochips, "chips", "list", env=env)

    fields = json.loads(shown.stdout)
    assert fields["misconfigured"] == "the instance's integration is 'EVOLUTION'"
    assert (fields["unstable"], fields["owner_number"], fields["number_mismatch"]) == (
        False, None, False,
    )  # fmt: skip
    assert (fields["drops"], fields["drops_since"]) == (0, None)
    header, row = listed.stdout.splitlines()
    assert header.split()[3] == "FLAGS" and row.split()[3] == "misconfigured"
    assert settings.load(GOOD).unstable_clear_after == 600.0


async def test_chips_show_prints_what_a_webhook_said_on_one_line(
    db: Database, database_url: str
) -> None:
    """A profile name and JID come from WhatsApp by way of a webhook: newlines, carriage
    returns and terminal escapes in them are printed escaped, so they cannot forge lines
    or drive the terminal."""
    chip = await given_chip(db, "chip-01", "pending", "close")
    hostile = Facts(wuid="5511900000001@s.whatsapp.net", profile_name="Loja\r\nstatus: ok\x1b[2J")
    await lifecycle.fire(db, chip.id, Trigger.CONNECTED, Source.WEBHOOK, hostile)
    env = {"EVOCHIPS_DATABASE_URL": database_url}

    shown = await asyncio.to_thread(evochips, "chips", "show", "chip-01", env=env)

    assert "\x1b" not in shown.stdout and "\r" not in shown.stdout
    line = next(line for line in shown.stdout.splitlines() if line.startswith("profile_name"))
    assert line.endswith("Loja\\r\\nstatus: ok\\x1b[2J")
    assert not any(line.startswith("status: ok") for line in shown.stdout.splitlines())


def test_audit_export_refuses_an_id_past_64_bits(tmp_path: Path) -> None:
    env = {"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}
    result = evochips("audit", "export", "--after-id", "99999999999999999999", env=env)
    assert result.returncode == 2 and "--after-id" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_sandbox_on_the_same_state_file_is_refused(tmp_path: Path) -> None:
    """Two sandboxes on one state file would both restore its instances and post their
    webhooks, so one's simulated phone would move the chips of the other."""
    from tests.servers import free_port, serving_evochips

    state = tmp_path / "sandbox.json"
    first_port = free_port()
    env = {"EVOCHIPS_SANDBOX_STATE": str(state)}
    with serving_evochips(first_port, env, "sandbox", "--port", str(first_port), ready="/"):
        second = evochips("sandbox", "--port", str(free_port()), env=env)
    assert second.returncode == 1
    assert f"another sandbox is using the state file {state}" in second.stderr
    assert "Traceback" not in second.stderr


def test_the_sandbox_alone_on_a_port_in_use_says_so_in_one_sentence() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        result = evochips("sandbox", "--port", str(busy), env={})
    assert result.returncode == 1
    assert f"Error: cannot listen on 127.0.0.1:{busy}, the sandbox's port" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_another_port_than_the_public_url_warns(tmp_path: Path) -> None:
    from tests.servers import free_port, serving_evochips

    env = {**GOOD, "EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}
    assert evochips("migrate", env=env).returncode == 0
    port = free_port()
    with serving_evochips(port, env, "serve", "--port", str(port)) as server:
        printed = server.output()
    assert (
        f"EVOCHIPS_PUBLIC_URL is http://127.0.0.1:8000 but this server listens on port {port}"
        in printed
    )


@pytest.mark.parametrize("command", [("chips", "list"), ("chips", "show", "x"),
                                     ("chips", "history", "x")])  # fmt: skip
def test_a_failing_json_command_still_prints_a_json_document(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    (tmp_path / "cli.db").write_text("not a database\n")
    result = evochips(*command, "--json", env={"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)})
    assert result.returncode == 1
    assert "not an SQLite database" in json.loads(result.stdout)["error"]


def test_an_unknown_chip_with_json_is_a_json_error(tmp_path: Path) -> None:
    env = {"EVOCHIPS_DATABASE_URL": _sqlite(tmp_path)}
    assert evochips("migrate", env=env).returncode == 0
    result = evochips("chips", "show", "nope", "--json", env=env)
    assert result.returncode == 1
    assert json.loads(result.stdout) == {"error": "no chip with instance name or id 'nope'"}


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_free_port_passes_the_in_use_check_on_either_address_family(host: str) -> None:
    import uvicorn

    from evochips.cli.service import _refuse_if_taken

    _refuse_if_taken(uvicorn.Config(app=None, host=host, port=0), "the receiver's port")
