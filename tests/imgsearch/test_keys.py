"""API keys on the real node: stored only as hashes, one-time display, revocation, sessions'
secret shared by every process."""

from __future__ import annotations

import uuid

import pytest

from imgsearch.errors import Conflict
from imgsearch.esclient import connect
from imgsearch.keys import KeyRequestError, KeyStore, key_hash, scope_allows


@pytest.fixture
def keys(settings):
    store = KeyStore(connect(settings), f"t-keys-{uuid.uuid4().hex[:12]}")
    yield store
    store.es.indices.delete(index=store.index, ignore_unavailable=True)


def test_a_key_is_stored_only_as_its_hash_and_authenticates(keys):
    key, record = keys.create("ci", "read")
    assert key.startswith("isk_") and len(key) == 47
    raw = keys.es.search(index=keys.index, size=10).body["hits"]["hits"]
    assert key not in str(raw)  # neither the key nor a part of it is stored
    assert key[4:20] not in str(raw)
    assert {h["_id"] for h in raw} == {key_hash(key)}
    found = keys.authenticate(key)
    assert found is not None and (found.name, found.scope) == ("ci", "read")
    assert keys.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert keys.authenticate("not a key") is None
    assert keys.authenticate("") is None


def test_revoked_is_refused_at_once_and_still_listed(keys):
    key, _ = keys.create("laptop", "admin")
    assert keys.authenticate(key) is not None
    other = KeyStore(keys.es, keys.index)  # another worker, which has the key cached
    assert other.authenticate(key) is not None
    keys.revoke("laptop")
    assert keys.authenticate(key) is None
    import time
    time.sleep(0.6)  # CACHE_SECONDS
    assert other.authenticate(key) is None
    listed = keys.list_keys()
    assert [(k.name, k.scope) for k in listed] == [("laptop", "admin")]
    assert listed[0].revoked_at is not None
    # The name is free again once revoked.
    key2, _ = keys.create("laptop", "read")
    assert keys.authenticate(key2).scope == "read"


def test_bad_requests_are_refused_with_what_to_do(keys):
    keys.create("ci", "write")
    with pytest.raises(Conflict, match="already named 'ci'"):
        keys.create("ci", "read")
    with pytest.raises(KeyRequestError, match="scope must be one of read, write, admin"):
        keys.create("other", "root")
    with pytest.raises(KeyRequestError, match="a key's name"):
        keys.create("no spaces please", "read")
    with pytest.raises(KeyRequestError, match="no active key is named 'ghost'"):
        keys.revoke("ghost")


def test_scopes_include_the_lower_ones():
    assert scope_allows("admin", "write") and scope_allows("admin", "read")
    assert scope_allows("write", "read") and not scope_allows("write", "admin")
    assert not scope_allows("read", "write")


def test_every_process_signs_sessions_with_one_secret(keys):
    first = KeyStore(keys.es, keys.index).session_secret()
    assert len(first) == 32
    assert KeyStore(keys.es, keys.index).session_secret() == first
    assert keys.list_keys() == []  # the secret is not a key
