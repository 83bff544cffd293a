"""The probe registry: who may send, and the identity tags their points carry; and the
operators, who may ask the fleet (``/api/v1/asks``), in a second table of the same file.

SQLite under the data directory. A token is ``pw1_<key id>_<secret>``. Only a SHA-256 of
the secret is stored; the secret has 256 bits, so a fast hash is enough. The stored hash
is compared with ``hmac.compare_digest``. A revoked probe's token fails on its next
request, since every request is checked against the database.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from collector.identity import Identity

# matched with fullmatch: ``$`` would also match before a trailing newline
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")  # as probe ids: tag-safe
_COUNTRY_RE: Final = re.compile(r"[A-Z]{2}")
_TOKEN_RE: Final = re.compile(r"pw1_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
#: an operator's token: another prefix, so neither kind is ever taken for the other
_OPERATOR_RE: Final = re.compile(r"pwo1_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
OPERATOR_PREFIX: Final = "pwo1_"
ASN_MAX: Final = 2**32 - 1  # AS numbers are 32 bits (RFC 6793)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS probes (
    id TEXT PRIMARY KEY,
    region TEXT NOT NULL,
    country TEXT NOT NULL DEFAULT '',
    city TEXT NOT NULL DEFAULT '',
    lat REAL, lon REAL, asn INTEGER,
    key_id TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS operators (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL UNIQUE,
    secret_sha256 TEXT NOT NULL,
    created_at REAL NOT NULL,
    revoked_at REAL
);
"""


class RegistryError(ValueError):
    """A registry request that cannot be done; the message says why."""


def check_identity(
    probe_id: str,
    region: str,
    country: str = "",
    city: str = "",
    lat: float | None = None,
    lon: float | None = None,
    asn: int | None = None,
) -> None:
    """A probe's identity, as its points will carry it; ``RegistryError`` says what is
    wrong. The id and the region are tags, so they follow the probe id pattern."""
    if not _ID_RE.fullmatch(probe_id):
        raise RegistryError(
            f"probe id {probe_id!r}: use 1-63 of A-Z a-z 0-9 _ . : - (a letter or digit first)"
        )
    if not _ID_RE.fullmatch(region):
        raise RegistryError(
            f"region {region!r}: use 1-63 of A-Z a-z 0-9 _ . : - (a letter or digit first)"
        )
    if country and not _COUNTRY_RE.fullmatch(country):
        raise RegistryError(f"country {country!r}: use a two-letter ISO 3166 code like DE")
    if any(c == "\\" or not c.isprintable() for c in city):
        raise RegistryError(f"city {city!r}: no line breaks, control characters or backslashes")
    if lat is not None and not -90 <= lat <= 90:
        raise RegistryError(f"lat {lat}: must be within -90..90")
    if lon is not None and not -180 <= lon <= 180:
        raise RegistryError(f"lon {lon}: must be within -180..180")
    if asn is not None and not 0 <= asn <= ASN_MAX:
        raise RegistryError(f"asn {asn}: must be within 0..{ASN_MAX}")


@dataclass(frozen=True, slots=True)
class ProbeRow:
    identity: Identity
    created_at: float
    revoked_at: float | None


class Registry:
    """The registry at ``path``; with ``create=False`` a missing one is a ``RegistryError``
    (listing a mistyped data directory must not make an empty registry there)."""

    def __init__(self, path: Path, create: bool = True) -> None:
        if not create and not path.exists():
            raise RegistryError(
                f"no registry at {path}: `popwatch-collector probes add` creates it; "
                "is the data directory (--data-dir, POPWATCH_DATA_DIR) the right one?"
            )
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise RegistryError(f"cannot open the registry {path}: {exc}") from None

    def close(self) -> None:
        self._db.close()

    def add(
        self,
        probe_id: str,
        region: str,
        country: str = "",
        city: str = "",
        lat: float | None = None,
        lon: float | None = None,
        asn: int | None = None,
    ) -> str:
        """Register a probe and return its token (shown once, stored only hashed)."""
        check_identity(probe_id, region, country, city, lat, lon, asn)
        row = self._db.execute("SELECT revoked_at FROM probes WHERE id = ?", (probe_id,)).fetchone()
        if row is not None and row[0] is None:
            raise RegistryError(f"probe {probe_id} exists; revoke it first to issue a new token")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        self._db.execute("DELETE FROM probes WHERE id = ?", (probe_id,))
        self._db.execute(
            "INSERT INTO probes (id, region, country, city, lat, lon, asn, key_id, "
            "secret_sha256, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (probe_id, region, country, city, lat, lon, asn, key_id, digest, time.time()),
        )
        return f"pw1_{key_id}_{secret}"

    def authenticate(self, token: str) -> Identity | None:
        """The identity of a valid, unrevoked token; None otherwise."""
        m = _TOKEN_RE.fullmatch(token)
        if not m:
            return None
        row = self._db.execute(
            "SELECT id, region, country, city, lat, lon, asn, secret_sha256 FROM probes "
            "WHERE key_id = ? AND revoked_at IS NULL",
            (m.group(1),),
        ).fetchone()
        digest = hashlib.sha256(m.group(2).encode()).hexdigest()
        if row is None:
            hmac.compare_digest(digest, digest)  # same work whether or not the key exists
            return None
        if not hmac.compare_digest(digest, row[7]):
            return None
        return Identity(*row[:7])

    # ------------------------------------------------------------ operators

    def add_operator(self, name: str) -> str:
        """Register an operator and return its token (shown once, stored only hashed)."""
        if not _ID_RE.fullmatch(name):
            raise RegistryError(
                f"operator {name!r}: use 1-63 of A-Z a-z 0-9 _ . : - (a letter or digit first)"
            )
        row = self._db.execute(
            "SELECT revoked_at FROM operators WHERE name = ?", (name,)
        ).fetchone()
        if row is not None and row[0] is None:
            raise RegistryError(f"operator {name} exists; revoke it first to issue a new token")
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        self._db.execute("DELETE FROM operators WHERE name = ?", (name,))
        self._db.execute(
            "INSERT INTO operators (name, key_id, secret_sha256, created_at) VALUES (?, ?, ?, ?)",
            (name, key_id, digest, time.time()),
        )
        return f"{OPERATOR_PREFIX}{key_id}_{secret}"

    def authenticate_operator(self, token: str) -> str | None:
        """The name of a valid, unrevoked operator token; None otherwise."""
        m = _OPERATOR_RE.fullmatch(token)
        if not m:
            return None
        row = self._db.execute(
            "SELECT name, secret_sha256 FROM operators WHERE key_id = ? AND revoked_at IS NULL",
            (m.group(1),),
        ).fetchone()
        digest = hashlib.sha256(m.group(2).encode()).hexdigest()
        if row is None:
            hmac.compare_digest(digest, digest)  # same work whether or not the key exists
            return None
        return str(row[0]) if hmac.compare_digest(digest, row[1]) else None

    def revoke_operator(self, name: str) -> None:
        cur = self._db.execute(
            "UPDATE operators SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL",
            (time.time(), name),
        )
        if cur.rowcount == 0:
            raise RegistryError(f"no active operator {name!r}")

    def operators(self) -> list[tuple[str, float, float | None]]:
        """(name, created_at, revoked_at) of every operator."""
        rows = self._db.execute(
            "SELECT name, created_at, revoked_at FROM operators ORDER BY name"
        ).fetchall()
        return [(str(r[0]), float(r[1]), r[2]) for r in rows]

    # ------------------------------------------------------------ probes

    def revoke(self, probe_id: str) -> None:
        cur = self._db.execute(
            "UPDATE probes SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), probe_id),
        )
        if cur.rowcount == 0:
            raise RegistryError(f"no active probe {probe_id!r}")

    def list(self) -> list[ProbeRow]:
        rows = self._db.execute(
            "SELECT id, region, country, city, lat, lon, asn, created_at, revoked_at "
            "FROM probes ORDER BY id"
        ).fetchall()
        return [ProbeRow(Identity(*r[:7]), r[7], r[8]) for r in rows]
