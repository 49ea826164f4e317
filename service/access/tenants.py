"""Tenants: named API keys with their limits, loaded once at start-up and stored only as SHA-256 digests.

Keys come from `--api-key` / `TSUMUGI_API_KEYS` (named `key-1`, `key-2`, ... in order, no limits) and from
`--api-keys-file`, a YAML file that a Kubernetes Secret can mount:

    keys:
      - name: team-a              # appears in metrics and logs; the key never does
        key: sk-team-a-...        # or key_sha256: <hex digest>, so the file need not hold the key itself
        requests_per_minute: 600  # optional limits; absent means unlimited
        tokens_per_minute: 200000
        max_concurrent_requests: 16
        models: [tiny, ada]       # optional: the base model / adapters this key may use (403 otherwise)

A presented key is hashed and compared with every stored digest in constant time, so neither the match nor
its position leaks through timing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.errors import StartupError, Unauthorized


class TenantSpec(BaseModel):
    """One entry of the keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    key: str | None = Field(default=None, min_length=8)
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    max_concurrent_requests: int | None = Field(default=None, gt=0)
    models: list[str] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> TenantSpec:
        if (self.key is None) == (self.key_sha256 is None):
            raise ValueError("give exactly one of 'key' and 'key_sha256'")
        return self


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[TenantSpec] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Tenant:
    """Who is calling, as far as limits, metrics and logs are concerned."""

    name: str
    digest: bytes = b""
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent_requests: int | None = None
    models: frozenset[str] | None = None  # None: every served model

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


ANONYMOUS = Tenant(name="anonymous")  # every caller when the service runs with --no-auth


def digest_of(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The configured tenants; `authenticate` turns an Authorization header into one of them."""

    def __init__(self, tenants: list[Tenant]) -> None:
        names = [t.name for t in tenants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise StartupError(f"API key names must be unique: {', '.join(duplicates)}")
        if len({t.digest for t in tenants}) != len(tenants):
            raise StartupError("the same API key is configured twice")
        self.tenants = tenants

    @classmethod
    def load(cls, keys: list[str], keys_file: Path | None, prefix: str = "key") -> KeyRing:
        """Keys from flags/env (named `<prefix>-1`, ...) plus the keys file; raises `StartupError` naming what is
        wrong (never a key)."""
        tenants = [Tenant(name=f"{prefix}-{i}", digest=digest_of(key)) for i, key in enumerate(keys, start=1)]
        if keys_file is not None:
            tenants += [_tenant(spec) for spec in read_keys_file(keys_file).keys]
        return cls(tenants)

    def authenticate(self, authorization: str) -> Tenant:
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("Missing API key: send 'Authorization: Bearer <key>'.")
        presented = digest_of(token)
        found = None
        for tenant in self.tenants:  # no early exit: the time taken does not depend on which key matched
            if secrets.compare_digest(presented, tenant.digest):
                found = tenant
        if found is None:
            raise Unauthorized("Invalid API key.", code="invalid_api_key")
        return found


def read_keys_file(path: Path) -> KeysFile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StartupError(f"cannot read the API keys file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise StartupError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    try:
        return KeysFile.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'keys'}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        raise StartupError(f"{path}: {problems}") from None


def _tenant(spec: TenantSpec) -> Tenant:
    digest = bytes.fromhex(spec.key_sha256) if spec.key_sha256 else digest_of(spec.key or "")
    return Tenant(
        name=spec.name,
        digest=digest,
        requests_per_minute=spec.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute,
        max_concurrent_requests=spec.max_concurrent_requests,
        models=frozenset(spec.models) if spec.models is not None else None,
    )
