"""API keys with scopes (``read`` < ``write`` < ``admin``), stored only as their hash.

Where they live: an Elasticsearch index of their own (``<ES_INDEX>-keys`` unless
``IMGSEARCH_KEYS_INDEX`` names another). The web app already depends on that cluster and
nothing else: every gunicorn worker, on every machine, sees the same keys without a file to
share or copy, they survive restarts and redeploys, and the compose stack's Elasticsearch role,
which covers ``<ES_INDEX>-*``, already grants the app what it needs (no new privilege, no
new volume). A GET by document id is real-time in Elasticsearch (it reads the translog, no
refresh needed), so a key created or revoked is seen by the next lookup of any worker.

The hash: SHA-256 of the key, hex, which is also the document's id. A key is 32 bytes from
``secrets`` (256 bits), so no dictionary or brute force can reverse its hash, and a slow
password hash (bcrypt, scrypt, Argon2) would buy nothing but ~50-100 ms of CPU on every
request; a salt is pointless for a value that is never reused. Whoever reads the index learns
names, scopes and hashes, never a key. The lookup fetches the document by the hash and then
compares the stored hash with ``hmac.compare_digest`` (constant time), so the comparison
leaks nothing about how much of a guess was right.

Revocation marks the document (``revoked_at``): ``keys list`` keeps showing it, and the key is
refused at once; workers cache a lookup for :data:`CACHE_SECONDS` only, so a revocation holds
on every worker within a second. Nothing here logs a key.

The same index keeps the secret that signs the web page's session cookies (document
``session-secret``, made once by whichever worker needs it first): shared by every worker and
surviving restarts like the keys. Anyone able to read this index can already read the whole
collection, so it holds nothing more sensitive than what it protects.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from elasticsearch import BadRequestError, ConflictError, Elasticsearch, NotFoundError

from .errors import BadInput, Conflict
from .esclient import translated

SCOPES = ("read", "write", "admin")  # each includes the ones before it
KEY_PREFIX = "isk_"  # recognisable in a leaked file or a secret scanner's rules
# How long a worker trusts its last lookup of a key: a revocation holds on every worker within
# this much time (the issue asks for one second); a lookup costs one GET by id (~1 ms on
# loopback), so this only spares Elasticsearch a GET per request under load.
CACHE_SECONDS = 0.5
# ``last_used`` is written at most this often per key and worker: exact enough for "is this
# key still in use?", and not one write per request.
LAST_USED_EVERY_S = 60.0
SECRET_ID = "session-secret"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_KEY = re.compile(r"^isk_[A-Za-z0-9_-]{43}$")

MAPPING = {
    "settings": {"number_of_shards": 1, "number_of_replicas": 0},
    "mappings": {
        "dynamic": "strict",
        "properties": {
            "kind": {"type": "keyword"},  # "key" or "secret"
            "name": {"type": "keyword"},
            "scope": {"type": "keyword"},
            "hash": {"type": "keyword"},
            "created_at": {"type": "date"},
            "last_used_at": {"type": "date"},
            "revoked_at": {"type": "date"},
            "secret": {"type": "keyword", "index": False},
        },
    },
}


class KeyRequestError(BadInput):
    """A key management request that cannot be done as asked (a bad name or scope)."""

    code = "invalid_key_request"


@dataclass(frozen=True)
class ApiKey:
    """A key as stored: never the key itself. ``id`` is its hash."""

    id: str
    name: str
    scope: str
    created_at: str
    last_used_at: str | None = None
    revoked_at: str | None = None

    def allows(self, scope: str) -> bool:
        return scope_allows(self.scope, scope)

    def to_json(self) -> dict:
        return {"name": self.name, "scope": self.scope, "created_at": self.created_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at}


def scope_allows(held: str, needed: str) -> bool:
    """Whether a key of scope ``held`` may do what needs ``needed`` (admin > write > read)."""
    return SCOPES.index(held) >= SCOPES.index(needed)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_key(value: str) -> bool:
    return bool(_KEY.match(value))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _from_doc(doc_id: str, source: dict) -> ApiKey:
    return ApiKey(doc_id, source["name"], source["scope"], source["created_at"],
                  source.get("last_used_at"), source.get("revoked_at"))


class KeyStore:
    """The keys of one index; thread-safe, one per process."""

    def __init__(self, es: Elasticsearch, index: str):
        self.es = es
        self.index = index
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._last_used: dict[str, float] = {}
        self._lock = threading.Lock()
        self._secret: bytes | None = None

    # -- management (the CLI and the admin API) ---------------------------------------------

    @translated
    def ensure_index(self) -> None:
        if not self.es.indices.exists(index=self.index):
            try:
                self.es.indices.create(index=self.index, body=MAPPING)
            except BadRequestError as exc:  # another worker or the CLI made it first
                if exc.error != "resource_already_exists_exception":
                    raise

    @translated
    def create(self, name: str, scope: str) -> tuple[str, ApiKey]:
        """A new key for ``name``: ``(key, record)``; the key is shown this once only."""
        if not NAME.match(name or ""):
            raise KeyRequestError(
                f"a key's name is 1-64 letters, digits, '.', '_', '@' or '-', starting with a "
                f"letter or digit, not {name[:70]!r}")
        if scope not in SCOPES:
            raise KeyRequestError(f"scope must be one of {', '.join(SCOPES)}, not {scope[:40]!r}")
        self.ensure_index()
        if any(k.name == name and k.revoked_at is None for k in self.list_keys()):
            raise Conflict("key_exists", f"an active key is already named {name!r}; revoke "
                           "it first or choose another name")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        digest = key_hash(key)
        record = ApiKey(digest, name, scope, _now())
        self.es.index(index=self.index, id=digest, op_type="create", refresh=True, document={
            "kind": "key", "name": name, "scope": scope, "hash": digest,
            "created_at": record.created_at})
        return key, record

    @translated
    def list_keys(self) -> list[ApiKey]:
        """Every key, active and revoked, oldest first."""
        if not self.es.indices.exists(index=self.index):
            return []
        self.es.indices.refresh(index=self.index)
        hits = self.es.search(index=self.index, query={"term": {"kind": "key"}}, size=10_000,
                              sort=[{"created_at": "asc"}]).body["hits"]["hits"]
        return [_from_doc(h["_id"], h["_source"]) for h in hits]

    @translated
    def revoke(self, name: str) -> ApiKey:
        """Revoke the active key named ``name``; refused from now on, by every worker within
        :data:`CACHE_SECONDS`."""
        active = [k for k in self.list_keys() if k.name == name and k.revoked_at is None]
        if not active:
            raise KeyRequestError(f"no active key is named {name[:70]!r} (`keys list` shows them)")
        revoked_at = _now()
        for k in active:
            self.es.update(index=self.index, id=k.id, doc={"revoked_at": revoked_at},
                           refresh=True)
        with self._lock:
            self._cache.clear()
        return ApiKey(active[0].id, name, active[0].scope, active[0].created_at,
                      active[0].last_used_at, revoked_at)

    # -- authentication (every request that carries a key) ----------------------------------

    def authenticate(self, key: str) -> ApiKey | None:
        """The active key ``key`` is, else None (unknown, malformed or revoked)."""
        if not looks_like_key(key):
            return None
        return self.by_id(key_hash(key))

    def by_id(self, digest: str) -> ApiKey | None:
        """The active key whose hash is ``digest`` (a signed session names it), else None."""
        now = time.monotonic()
        with self._lock:
            cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        found = self._fetch(digest)
        with self._lock:
            if len(self._cache) > 10_000:  # a flood of wrong keys must not grow it forever
                self._cache.clear()
            self._cache[digest] = (now, found)
        if found is not None:
            self._touch(found, now)
        return found

    @translated
    def _fetch(self, digest: str) -> ApiKey | None:
        try:
            doc = self.es.get(index=self.index, id=digest).body
        except NotFoundError:  # no such key, or no keys index yet
            return None
        source = doc["_source"]
        if source.get("kind") != "key" or not hmac.compare_digest(
                source.get("hash", ""), digest):
            return None
        if source.get("revoked_at"):
            return None
        return _from_doc(doc["_id"], source)

    def _touch(self, key: ApiKey, now: float) -> None:
        if now - self._last_used.get(key.id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        self._last_used[key.id] = now
        # A lost "last used" must not fail the request it came with.
        with contextlib.suppress(Exception):
            self.es.update(index=self.index, id=key.id, doc={"last_used_at": _now()})

    # -- the session cookies' signing secret -------------------------------------------------

    @translated
    def session_secret(self) -> bytes:
        """The secret every worker signs session cookies with, made on first use."""
        if self._secret is not None:
            return self._secret
        self.ensure_index()
        try:
            source = self.es.get(index=self.index, id=SECRET_ID).body["_source"]
        except NotFoundError:
            with contextlib.suppress(ConflictError):  # another worker made it first: use theirs
                self.es.index(index=self.index, id=SECRET_ID, op_type="create", document={
                    "kind": "secret", "secret": secrets.token_hex(32), "created_at": _now()})
            source = self.es.get(index=self.index, id=SECRET_ID).body["_source"]
        self._secret = bytes.fromhex(source["secret"])
        return self._secret
