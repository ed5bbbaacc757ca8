"""The Elasticsearch client the product uses, and the errors it raises instead of the client's.

:func:`connect` builds the client from settings (several nodes, credentials, CA, orjson for
the vectors); :func:`translated` wraps a method so that no client exception leaves it: callers
(the web app, the indexer) handle :class:`StoreError` and its kinds only.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import orjson
from elasticsearch import ApiError, Elasticsearch, TransportError
from elasticsearch.serializer import (
    CompatibilityModeJsonSerializer,
    CompatibilityModeNdjsonSerializer,
    JsonSerializer,
    NdjsonSerializer,
)

from .errors import Unavailable
from .settings import Settings

# Statuses worth retrying: overload and the gateway/availability family.
RETRY_STATUSES = (429, 502, 503, 504)


class StoreError(Unavailable):
    """A problem with the index that a person has to act on; the message says what to do."""

    code = "index_problem"


class StoreUnavailable(StoreError):
    """Elasticsearch could not be reached, or did not answer in time."""

    code = "elasticsearch_unavailable"


class IndexMissing(StoreError):
    """The alias or index named does not exist (nothing is indexed yet)."""

    code = "index_empty"


class StoreRefused(StoreError):
    """Elasticsearch answered a request with an error."""

    code = "elasticsearch_error"

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Orjson:
    """JSON through orjson: vectors are most of every request, and orjson writes a float32
    array 16x faster than the json module, in its shortest float32 form (24 KiB a vector rather
    than 44 KiB of float64 digits; docs/BENCHMARKS.md), which Elasticsearch then parses in
    less time too."""

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=orjson.OPT_SERIALIZE_NUMPY)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


class _JsonSerializer(_Orjson, JsonSerializer):
    pass


class _NdjsonSerializer(_Orjson, NdjsonSerializer):
    pass


class _CompatibilityModeJsonSerializer(_Orjson, CompatibilityModeJsonSerializer):
    pass


class _CompatibilityModeNdjsonSerializer(_Orjson, CompatibilityModeNdjsonSerializer):
    pass


SERIALIZERS = {
    s.mimetype: s()
    for s in (_JsonSerializer, _NdjsonSerializer, _CompatibilityModeJsonSerializer,
              _CompatibilityModeNdjsonSerializer)
}


def connect(settings: Settings) -> Elasticsearch:
    """An Elasticsearch client for the settings (credentials and CA only when given).

    The client fails over but does not retry: a request that finds a node unreachable, timed
    out or answering 429/502/503/504 moves on to each other listed node once, without waiting
    (``max_retries`` = nodes − 1), and then fails; with one node, one request. Reads (the web
    app's searches) so fail fast. Waiting for Elasticsearch to come back is the indexer's
    alone: :class:`imgsearch.store.ImageStore` retries its writes and existence checks with
    backoff, one request an attempt (``IMGSEARCH_BULK_*``)."""
    hosts = [url.strip() for url in settings.es_url.split(",") if url.strip()]
    kwargs: dict[str, Any] = {
        "request_timeout": settings.es_request_timeout,
        "retry_on_status": RETRY_STATUSES,
        "retry_on_timeout": True,
        "max_retries": max(len(hosts) - 1, 0),
        "serializers": SERIALIZERS,
    }
    if settings.es_username:
        kwargs["basic_auth"] = (settings.es_username, settings.es_password or "")
    if settings.es_ca_certs:
        kwargs["ca_certs"] = settings.es_ca_certs
    return Elasticsearch(hosts, **kwargs)


def with_cause(exc: Exception) -> Exception:
    """``exc``, saying why a request got no answer: elastic_transport replaces the errors of a
    request's last failure with those of its earlier attempts, so that with no retries a
    refused connection reads only "Connection error"; the node's own error is put back."""
    if isinstance(exc, TransportError) and not exc.errors and exc.__cause__ is not None:
        exc.errors = (exc.__cause__,)
    return exc


def translated(method):
    """Let no client exception out of ``method``: callers (the web app, the indexer) handle the
    store's own errors, and never import the client's."""

    def translate(exc: Exception) -> StoreError:
        with_cause(exc)
        if isinstance(exc, ApiError):
            if exc.error == "index_not_found_exception":
                return IndexMissing(f"no such index: {exc}")
            return StoreRefused(f"Elasticsearch refused the request (status {exc.status_code}): "
                                f"{exc}", exc.status_code)
        return StoreUnavailable(f"Elasticsearch is not reachable: {exc}")

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def generator(*args, **kwargs):
            try:
                yield from method(*args, **kwargs)
            except (ApiError, TransportError) as exc:
                raise translate(exc) from exc

        return generator

    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except (ApiError, TransportError) as exc:
            raise translate(exc) from exc

    return call
