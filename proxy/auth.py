"""API keys: who may call, which models they see, and who may use the admin API.

With no keys configured access is open (``modelplane run`` then binds loopback only). With keys,
``Authorization: Bearer <key>`` is required; the key's sha256 is compared in constant time with
each configured hash. A key reaches a model when one of its fnmatch globs matches the model's
name or one of its aliases; other models are invisible to it (absent from ``/v1/models``, 404 on
requests, as OpenAI answers for models a key may not use). The admin API (``/api/*``,
``/metrics``) needs a key whose globs include ``*``: a key scoped to some models must not unload
or inspect others.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from proxy.errors import forbidden, unauthorized
from proxy.gateway import ApiKey, ModelRoute

ADMIN_GLOB = "*"


@dataclass(frozen=True)
class Access:
    """What the caller may do. ``key`` is ``None`` for open access (no keys configured)."""

    key: ApiKey | None

    @property
    def open(self) -> bool:
        return self.key is None

    @property
    def admin(self) -> bool:
        return self.key is None or ADMIN_GLOB in self.key.models

    def may_reach(self, route: ModelRoute) -> bool:
        if self.key is None or ADMIN_GLOB in self.key.models:
            return True
        names = (route.name, *route.aliases)
        return any(fnmatchcase(name, glob) for glob in self.key.models for name in names)


OPEN = Access(None)


def hash_key(key: str) -> str:
    """The hex sha256 that Node manifests store (``modelplane hash-key`` prints it)."""
    return hashlib.sha256(key.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else ``None``."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(keys: Sequence[ApiKey], authorization: str | None) -> Access:
    """The caller's access, or :class:`ProxyError` 401. Every key is compared, so timing does
    not reveal which one matched."""
    if not keys:
        return OPEN
    token = bearer_token(authorization)
    if token is None:
        raise unauthorized(
            "missing API key: send it as `Authorization: Bearer <key>`"
            if not authorization
            else "malformed Authorization header: expected `Bearer <key>`"
        )
    digest = hash_key(token)
    found: ApiKey | None = None
    for key in keys:
        if hmac.compare_digest(digest, key.sha256.lower()):
            found = key
    if found is None:
        raise unauthorized("invalid API key")
    return Access(found)


def require_admin(access: Access) -> None:
    if not access.admin:
        raise forbidden(
            f"API key `{access.key.name if access.key else ''}` may not use the admin API "
            "(it needs the model glob `*`)"
        )


def check(keys: Sequence[ApiKey], authorization: str | None, admin: bool = False) -> Access:
    """Authenticate and, for admin routes, require an admin key."""
    access = authenticate(keys, authorization)
    if admin:
        require_admin(access)
    return access
