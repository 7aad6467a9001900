"""The OpenAPI 3.1 description of ``/api/v1``, served at ``/api/v1/openapi.json``.

Written out rather than generated, so it says what each route answers and why; a test
checks that it names exactly the routes the app serves, and schemathesis checks the
answers against it.
"""

from __future__ import annotations

from typing import Any

from evochips.api.errors import STATUS_BY_CODE
from evochips.api.params import DEFAULT_LIMIT, MAX_LIMIT
from evochips.lifecycle import Source
from evochips.statemachine import LIFECYCLE_TRIGGERS, ChipStatus, ConnectionState, Trigger

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """The error responses a route may give, besides 401, 500 and 503 which every one may."""
    shown = sorted({*statuses, 401, 500, 503})
    return {str(status): {"$ref": f"#/components/responses/E{status}"} for status in shown}


_ERROR_MEANING = {
    400: "The request is invalid; `fields` names every bad field.",
    401: "No API key, or not one of EVOCHIPS_API_KEYS.",
    404: "No chip has this id or instance name (or, for a QR as PNG, there is no QR).",
    409: "The name is in use, the trigger is not allowed from the chip's status, the chip "
    "changed concurrently, or the Idempotency-Key is in use.",
    413: "The body is larger than 64 KiB.",
    500: "A fault in evochips itself (it is logged); the answer carries no detail.",
    502: "Evolution API refused the call; its message is included.",
    503: "The database or Evolution API is unreachable; retry after `Retry-After` seconds.",
    504: "Evolution API did not answer in time.",
}

_CHIP_REF = {
    "name": "chip",
    "in": "path",
    "required": True,
    "description": "The chip's id or its instance name.",
    "schema": {"type": "string", "minLength": 1},
}
_LIMIT = {
    "name": "limit",
    "in": "query",
    "description": "Rows per page.",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
}
_CURSOR = {
    "name": "cursor",
    "in": "query",
    "description": "`next_cursor` from the page before.",
    "schema": {"type": "string"},
}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema}


def _command(summary: str, result: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "parameters": [_CHIP_REF],
        "responses": {"200": _json(result, "Done."), **_errors(404, 409, 502, 504, *errors)},
    }


def _with_chip(**properties: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "required": [*properties, "chip"],
        "properties": {**properties, "chip": _ref("Chip")},
    }


def document() -> dict[str, Any]:
    statuses = [s.value for s in ChipStatus]
    connections = [c.value for c in ConnectionState]
    lifecycle = [t.value for t in LIFECYCLE_TRIGGERS]
    message = {"type": "string"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "evochips",
            "version": "1",
            "description": "Commands for a fleet of WhatsApp numbers on Evolution API, "
            "and the audit trail of every change.",
        },
        "security": [{"bearer": []}],
        "paths": {
            "/api/v1/openapi.json": {
                "get": {
                    "summary": "This document.",
                    "security": [],
                    "responses": {"200": _json({"type": "object"}, "The OpenAPI document.")},
                }
            },
            "/api/v1/chips": {
                "post": {
                    "summary": "Register a chip and create its Evolution instance.",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "description": "A retry with the same key and body gets the "
                            "first answer instead of a second chip.",
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {JSON: {"schema": _ref("NewChip")}},
                    },
                    "responses": {
                        "201": _json(
                            {
                                "type": "object",
                                "required": ["chip", "qr_code"],
                                "properties": {
                                    "chip": _ref("Chip"),
                                    "qr_code": _nullable("string"),
                                },
                            },
                            "Created; `qr_code` is the first QR when Evolution had one.",
                        ),
                        **_errors(400, 409, 413, 502, 504),
                    },
                },
                "get": {
                    "summary": "List chips, oldest first.",
                    "parameters": [
                        _query(
                            "status",
                            {"enum": statuses},
                            "Only chips in this status "
                            "(`deleted` lists deleted chips, which are hidden otherwise).",
                        ),
                        _query("connection_state", {"enum": connections}, "Only this state."),
                        _query("connected", {"type": "boolean"}, "Only (dis)connected chips."),
                        _LIMIT,
                        _CURSOR,
                    ],
                    "responses": {
                        "200": _json(_page("Chip"), "A page of chips."),
                        **_errors(400),
                    },
                },
            },
            "/api/v1/chips/{chip}": {
                "get": {
                    "summary": "One chip, with the lifecycle triggers it allows now.",
                    "parameters": [_CHIP_REF],
                    "responses": {"200": _json(_ref("Chip"), "The chip."), **_errors(400, 404)},
                },
                "delete": _command(
                    "Delete the instance in Evolution; the chip is kept as deleted.",
                    _with_chip(message=message),
                    400,
                ),
            },
            "/api/v1/chips/{chip}/qrcode": {
                "get": {
                    "summary": "Fetch the chip's current QR, as JSON or (Accept: image/png) "
                    "as the image.",
                    "parameters": [_CHIP_REF],
                    "responses": {
                        "200": {
                            "description": "The QR; `qr_code` is null when the chip is "
                            "connected or Evolution has no QR yet.",
                            "content": {
                                JSON: {"schema": _ref("QrCode")},
                                "image/png": {
                                    "schema": {"type": "string", "contentMediaType": "image/png"}
                                },
                            },
                        },
                        **_errors(400, 404, 409, 502, 504),
                    },
                }
            },
            "/api/v1/chips/{chip}/connection-check": {
                "post": _command(
                    "Ask Evolution for the connection state and bring the chip in line.",
                    _with_chip(state=_nullable("string"), connected={"type": "boolean"}),
                    400,
                )
            },
            "/api/v1/chips/{chip}/logout": {
                "post": _command(
                    "Log the number out; the chip needs a new QR.",
                    _with_chip(message=message),
                    400,
                )
            },
            "/api/v1/chips/{chip}/reconnect": {
                "post": _command(
                    "Restart the instance and return a fresh QR when there is one.",
                    _with_chip(message=message, qr_code=_nullable("string")),
                    400,
                )
            },
            "/api/v1/chips/{chip}/transitions": {
                "post": {
                    "summary": "Move the chip through its lifecycle.",
                    "parameters": [_CHIP_REF],
                    "requestBody": {
                        "required": True,
                        "content": {
                            JSON: {
                                "schema": {
                                    "type": "object",
                                    "required": ["trigger"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "trigger": {"enum": lifecycle},
                                        "expected_version": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": 2**31 - 1,
                                            "description": "Move the chip only if its "
                                            "version is still this one (409 "
                                            "concurrent_change otherwise).",
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_with_chip(message=message), "Moved."),
                        **_errors(400, 404, 409, 413),
                    },
                },
                "get": {
                    "summary": "The chip's history, oldest first.",
                    "parameters": [_CHIP_REF, _LIMIT, _CURSOR],
                    "responses": {
                        "200": _json(_page("Transition"), "A page of the chip's history."),
                        **_errors(400, 404),
                    },
                },
            },
            "/api/v1/transitions": {
                "get": {
                    "summary": "Every chip's transitions in the order they were committed; "
                    "keep `next_cursor` to export incrementally.",
                    "parameters": [
                        _query(
                            "since",
                            {"type": "string", "format": "date-time"},
                            "Recorded at or after this time.",
                        ),
                        _query(
                            "until",
                            {"type": "string", "format": "date-time"},
                            "Recorded before this time.",
                        ),
                        _query("source", {"enum": [s.value for s in Source]}, "Only this source."),
                        _query(
                            "trigger", {"enum": [t.value for t in Trigger]}, "Only this trigger."
                        ),
                        _query("status", {"enum": statuses}, "Only transitions into this status."),
                        _LIMIT,
                        _CURSOR,
                    ],
                    "responses": {
                        "200": _json(_page("Transition"), "A page of the fleet's history."),
                        **_errors(400),
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "One of the keys in EVOCHIPS_API_KEYS.",
                }
            },
            "responses": {
                f"E{status}": _json(_ref("Error"), meaning)
                for status, meaning in _ERROR_MEANING.items()
            },
            "schemas": _schemas(statuses, connections, lifecycle),
        },
    }


def _page(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items", "next_cursor", "has_more"],
        "properties": {
            "items": {"type": "array", "items": _ref(item)},
            "next_cursor": _nullable("string"),
            "has_more": {"type": "boolean"},
        },
    }


def _schemas(statuses: list[str], connections: list[str], lifecycle: list[str]) -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    nullable_time = {"type": ["string", "null"], "format": "date-time"}
    return {
        "NewChip": {
            "type": "object",
            "required": ["instance_name", "telefone"],
            "additionalProperties": False,
            "properties": {
                "instance_name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                "telefone": {
                    "type": "string",
                    "description": "10 to 15 digits; spaces, '+', '(', ')' and '-' are dropped.",
                },
                "chip_id": {"type": "string", "pattern": "^[A-Za-z0-9-]{1,36}$"},
            },
        },
        "Chip": {
            "type": "object",
            "required": [
                "id",
                "instance_name",
                "telefone",
                "status",
                "connection_state",
                "evolution_connected",
                "version",
                "created_at",
                "updated_at",
                "deleted_at",
                "has_qr_code",
                "unstable",
                "number_mismatch",
                "allowed_triggers",
            ],
            "properties": {
                "id": {"type": "string"},
                "instance_name": {"type": "string"},
                "telefone": {"type": "string"},
                "status": {"enum": statuses},
                "connection_state": {"enum": connections},
                "evolution_connected": {"type": "boolean"},
                "evolution_instance_id": _nullable("string"),
                "status_reason": _nullable("integer"),
                "owner_jid": _nullable("string"),
                "profile_name": _nullable("string"),
                "evolution_date_time": {
                    "type": ["string", "null"],
                    "description": "Evolution's date_time of the last event: the Evolution "
                    "server's local time, without an offset.",
                },
                "stuck_since": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "Since when reconciliation has seen this pending chip "
                    "wait without a QR; null when it is not stuck.",
                },
                "unstable": {
                    "type": "boolean",
                    "description": "The connection dropped from open 3 times within 60 s "
                    "of Evolution's time; cleared once it stays open for "
                    "EVOCHIPS_UNSTABLE_CLEAR_AFTER, or by a logout or reconnect.",
                },
                "unstable_since": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "When evochips found the chip unstable; null when it is not.",
                },
                "drops": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Drops from open counted in the current window.",
                },
                "drops_since": {
                    "type": ["string", "null"],
                    "format": "date-time",
                    "description": "Evolution's date_time of the window's first drop (its "
                    "local time labelled UTC, never compared with ours); null with no drops.",
                },
                "misconfigured": _nullable(
                    "string",
                    description="Why the instance cannot work as a WhatsApp chip (it is not "
                    "a WHATSAPP-BAILEYS instance); null when nothing is wrong.",
                ),
                "owner_number": _nullable(
                    "string",
                    description="The number WhatsApp paired, in E.164, from the owner JID "
                    "(a Brazilian mobile with its ninth digit).",
                ),
                "number_mismatch": {
                    "type": "boolean",
                    "description": "The paired number is not `telefone` (a Brazilian "
                    "mobile with or without its ninth digit counts as the same).",
                },
                "version": {"type": "integer"},
                "created_at": time,
                "updated_at": time,
                "deleted_at": nullable_time,
                "has_qr_code": {"type": "boolean"},
                "allowed_triggers": {"type": "array", "items": {"enum": lifecycle}},
            },
        },
        "QrCode": {
            "type": "object",
            "required": ["qr_code", "code", "connected"],
            "properties": {
                "qr_code": _nullable("string", description="A data URL of the PNG."),
                "code": _nullable("string", description="The text the QR encodes."),
                "connected": {"type": "boolean"},
            },
        },
        "Transition": {
            "type": "object",
            "required": [
                "chip_id",
                "seq",
                "created_at",
                "trigger",
                "source",
                "from_status",
                "to_status",
                "from_connection",
                "to_connection",
            ],
            "properties": {
                "id": {"type": "integer", "description": "Fleet-wide, in commit order."},
                "chip_id": {"type": "string"},
                "seq": {"type": "integer", "minimum": 1},
                "created_at": time,
                "trigger": {"type": "string"},
                "source": {"enum": [s.value for s in Source]},
                "from_status": {"type": ["string", "null"]},
                "to_status": {"enum": statuses},
                "from_connection": {"type": ["string", "null"]},
                "to_connection": {"enum": connections},
                "status_reason": _nullable("integer"),
                "webhook_event_id": _nullable("integer"),
                "meta": {"type": "object"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"enum": sorted(STATUS_BY_CODE)},
                        "message": {"type": "string"},
                        "fields": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                            "description": "Each bad field and what is wrong with it.",
                        },
                    },
                }
            },
        },
    }
