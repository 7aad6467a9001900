"""Who may post webhooks: Evolution proves itself with the shared webhook secret.

Evolution signs nothing, so the secret travels one of three ways: the ``x-evochips-token``
header that create configures on v2 instances, an HS256 JWT in ``Authorization: Bearer``
(Evolution 2.3's ``jwt_key`` header, signed with the same secret), or a path segment
(``/webhooks/evolution/k/<secret>``) for v1 and the v2 global webhook, which cannot add
headers. Every comparison takes constant time.
"""

from __future__ import annotations

import hmac

import jwt
from starlette.requests import Request

TOKEN_HEADER = "x-evochips-token"
# Evolution's tokens live 600 s; allow a minute of clock difference either way, and
# refuse tokens meant to live much longer, which Evolution never makes.
JWT_LEEWAY_SECONDS = 60
JWT_MAX_LIFETIME_SECONDS = 900


def is_authentic(request: Request, secret: str) -> bool:
    path_secret = request.path_params.get("secret")
    if path_secret is not None:
        return _same(path_secret, secret)
    token = request.headers.get(TOKEN_HEADER)
    if token is not None:
        return _same(token, secret)
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return _valid_jwt(credentials.strip(), secret)
    return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _valid_jwt(token: str, secret: str) -> bool:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            options={"require": ["exp", "iat"]},
            leeway=JWT_LEEWAY_SECONDS,
        )
    except jwt.InvalidTokenError:
        return False
    issued, expires = claims["iat"], claims["exp"]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (issued, expires)):
        return False
    return bool(0 < expires - issued <= JWT_MAX_LIFETIME_SECONDS)
