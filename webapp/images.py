"""The write API (scope ``write``): add a photo, change its metadata, remove it.

- ``POST /api/images``: multipart ``image`` with the sidecar's metadata fields (``label``,
  ``tags``, ``extra.<column>``; imgsearch/metadata.py). The bytes are checked as a search
  upload's are (size, format, the query pixel cap, a decode slot), stored in the upload folder
  (imgsearch/uploads.py) and indexed through the indexer's own stages
  (imgsearch/indexing.py ``prepare``, ``embed_one``: thumbnail, tags, region vectors when the
  index has them). 201 with the document; 200 when those bytes are already indexed, with the
  metadata given applied as a PATCH would (the client said what it wants the image to carry,
  so dropping it silently would be the surprise). Searches see the image within one refresh
  interval: the answer says when (``searchable_at``; :func:`_searchable` says why it does not
  wait). Bytes excluded by an earlier DELETE are an explicit request to have them back: the
  exclusion is lifted, and the answer says so.
- ``PATCH /api/images/<id>``: JSON ``label``, ``tags``, ``extra`` (each replaced; null
  clears), 200 once searches see the change (changes are a person's, one at a time: the
  refresh interval's wait is worth an answer that means done).
- Metadata set by an add or a PATCH is also recorded as a person's decision
  (imgsearch/decisions.py ``metadata``, with the values it replaced) before the document
  changes, so that every later indexing run (a ``--new-index`` rebuild, the watcher, a
  re-embedding) writes it over the sidecar's (imgsearch/metadata.py ``with_decision`` has the
  rule for a sidecar edited afterwards); a write that then fails puts the earlier decision
  back. A DELETE forgets it.
- ``DELETE /api/images/<id>``: 204 once searches no longer see it. A file of the upload
  folder goes with its document and its thumbnail; a file of an indexed or watched folder is
  never touched: its document and thumbnail go, and its bytes are recorded as excluded
  (imgsearch/decisions.py) so the indexer and the watcher leave them out until the file
  changes.

Model switches: while a ``--new-index`` build is under way (a newer index of the alias exists
that the alias does not point at yet), every write is refused, 409 ``index_swap_in_progress``:
a write to the current index could be missed by the build, which carries the replaced index's
images and metadata into the new one (imgsearch/carry.py) as it finishes, and the new one's
model may not be this worker's. Refusing says what is going on and what to do; writing to both
indices would need the new model loaded here. While this worker still serves the previous
model after a swap (it loads the new one in the background), adds are 503 ``model_switching``
with Retry-After: an image must be embedded by the index's own model.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Blueprint, Flask, current_app, jsonify, request, url_for

from imgsearch.decisions import Decisions
from imgsearch.errors import Conflict
from imgsearch.images import ImageError, content_hash, sniff_format
from imgsearch.indexing import Target, embed_one, prepare
from imgsearch.metadata import MetadataError, checked, split_tags
from imgsearch.model import ImageModel
from imgsearch.pairs import PairFinder
from imgsearch.pipeline import now_iso
from imgsearch.settings import Settings
from imgsearch.store import IndexMissing, ModelVersionMismatch, StoreError
from imgsearch.uploads import UploadStore

from .auth import WRITE, is_admin, principal, requires
from .common import check_id, doc_json, service, thumbnails, uploaded_image
from .errors import Problem

bp = Blueprint("images", __name__)

# The form fields of an add besides the file: its metadata (and extra.<column>).
ADD_FIELDS = ("label", "tags")


def uploads() -> UploadStore:
    return current_app.extensions["imgsearch.uploads"]


def decisions() -> Decisions:
    return current_app.extensions["imgsearch.decisions"]


def collection_changed(*, written: tuple[str, ...] = (), deleted: tuple[str, ...] = ()) -> None:
    """An image was just written (added, or its metadata changed) or deleted: the one place
    where what depends on the collection hears of it. The near-duplicate pairs of an image
    written without them are found now (imgsearch/pairs.py: a refresh, one kNN query; a
    metadata change has them already); a deleted image's went with it (the store's delete)."""
    if not written:
        return
    store = service().store
    index = store.indices.current_index()
    if index is None:
        return
    try:
        PairFinder(store, index, service().settings.duplicate_floor).visit_missing(list(written))
    except StoreError as exc:  # the image is stored; `duplicates --update` finds its pairs
        current_app.logger.warning("near-duplicate pairs of %s not found: %s", written, exc)


@bp.post("/api/images")
@requires(WRITE)
def add():
    metadata = _form_metadata()
    data = uploaded_image()
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageError("not_an_image", "content is not a supported image (JPEG, PNG, GIF, "
                                         "WebP, BMP or TIFF)")
    target, model = _add_target()
    store, doc_id = service().store, content_hash(data)
    existing = store.get(doc_id, index=target.index)
    if existing is not None:
        if metadata:
            existing = _set_metadata(doc_id, existing, metadata, target.index) or existing
            collection_changed(written=(doc_id,))
        return _added(doc_id, existing, target, status=200)
    path = uploads().path(doc_id, fmt)
    had_thumbnail = thumbnails().path(doc_id) is not None
    doc = embed_one(data, path, uploads().root, target, settings=service().settings,
                    embedder=model, metadata=metadata, indexed_at=now_iso(),
                    decode_slot=service().decodes.hold)
    if decisions().hidden([doc_id]):  # bytes a person hid as a copy stay hidden when re-added
        doc["hidden"] = True
    wrote = sent = False
    decided: tuple | None = None
    try:
        _, wrote = uploads().put(doc_id, fmt, data)
        if metadata:  # recorded before the document, as a PATCH does
            decided = decisions().set_metadata(doc_id, metadata, {}, by=principal().name)
        sent = True
        store.put(doc, target.index, wait=False)
        # A build that began while this image was embedded would not have it: undo, refuse.
        _refuse_during_swap("was being added")
    except BaseException:
        if sent:
            _forget(doc_id, target.index)
        if decided is not None:
            _restore_metadata(doc_id, decided[1])
        if wrote:
            uploads().remove(path)
        if not had_thumbnail:
            thumbnails().remove(doc_id)
        raise
    collection_changed(written=(doc_id,))
    current_app.logger.info("image %s added by %r", doc_id, principal().name)
    # The document as every read shows it (a real-time get: no refresh needed).
    source = store.get(doc_id, index=target.index) or {
        k: v for k, v in doc.items() if k not in ("vector", "regions")}
    return _added(doc_id, source, target, status=201)


def _forget(doc_id: str, index: str) -> None:
    """Undo a write that may have been stored (refused afterwards, or one whose answer was
    lost): one attempt, no retries, since the store may be what failed."""
    try:
        service().store.delete(doc_id, index, wait=False)
    except StoreError as exc:
        current_app.logger.warning("could not undo the write of %s: %s", doc_id, exc)


def _set_metadata(doc_id: str, source: dict, fields: dict, index: str) -> dict | None:
    """Change ``fields`` of the document ``doc_id`` (whose source is ``source``), recording
    them first as a person's decision with the values they replace; the decision before is
    put back if the change fails. The document's source afterwards, None if it went."""
    replaced = {name: source.get(name) for name in fields}
    _, before = decisions().set_metadata(doc_id, fields, replaced, by=principal().name)
    try:
        changed = service().store.update_fields(doc_id, fields, index)
    except BaseException:
        _restore_metadata(doc_id, before)
        raise
    if changed is None:  # deleted meanwhile: nothing was changed
        _restore_metadata(doc_id, before)
    return changed


def _restore_metadata(doc_id: str, before) -> None:
    """Undo a metadata decision whose write failed (one attempt: the store may be what
    failed; a decision left behind holds only values the person asked for)."""
    try:
        decisions().restore("metadata", doc_id, before)
    except StoreError as exc:
        current_app.logger.warning("could not undo the metadata decision of %s: %s", doc_id,
                                   exc)


def _added(doc_id: str, source: dict, target: Target, status: int):
    lifted = _lift_exclusion(doc_id)
    body = {
        "model_version": source.get("model_version"),
        "index": target.index if is_admin() else None,
        **doc_json(doc_id, source),
        "created": status == 201,
        "exclusion_lifted": lifted,
        **_searchable(target.index),
    }
    if lifted:
        body["message"] = ("These bytes had been removed through the API and excluded from "
                           "indexing; adding them again lifted the exclusion.")
    response = jsonify(body)
    response.status_code = status
    response.headers["Location"] = url_for("api.image", doc_id=doc_id)
    return response


def _searchable(index: str) -> dict:
    """When searches will see what was just written: after the index's next scheduled refresh,
    at most one refresh interval (1 s) away. Not waited for: with ``refresh=wait_for`` an add
    took a median 1.02 s against 0.25 s without (p95 0.38 s; 20 adds of real photos on the
    2-core test machine, the write itself 0.015 s against 1.04 s), a quarter of the adds one
    client can make a second; a refresh forced per add would make a segment per image. Where
    refreshes are off, this one refreshes the index itself."""
    interval = service().store.indices.refresh_interval(index)
    if interval is None:
        service().store.refresh(index)
        interval = 0.0
    at = datetime.now(UTC) + timedelta(seconds=interval)
    return {"searchable_after_s": interval,
            "searchable_at": at.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def _lift_exclusion(doc_id: str) -> bool:
    """A person asked for these bytes: an exclusion of them (an earlier DELETE) no longer
    holds. True if there was one."""
    if not decisions().excluded([doc_id]):
        return False
    decisions().undo("excluded", doc_id)
    current_app.logger.info("exclusion of %s lifted by an add from %r", doc_id,
                            principal().name)
    return True


@bp.patch("/api/images/<doc_id>")
@requires(WRITE)
def patch(doc_id: str):
    check_id(doc_id)
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        raise Problem(400, "invalid_body", "Send a JSON object (Content-Type: application/json) "
                                           "with any of label, tags and extra.")
    if not body:
        raise Problem(400, "invalid_body", "Nothing to change: give label, tags or extra.")
    fields = checked(body)
    index = _write_index()
    current = service().store.get(doc_id, index=index)
    if current is None:
        raise _unknown(doc_id)
    source = _set_metadata(doc_id, current, fields, index)
    if source is None:
        raise _unknown(doc_id)
    collection_changed(written=(doc_id,))
    return jsonify({"model_version": source.get("model_version"), **doc_json(doc_id, source)})


@bp.delete("/api/images/<doc_id>")
@requires(WRITE)
def delete(doc_id: str):
    check_id(doc_id)
    index = _write_index()
    store = service().store
    source = store.get(doc_id, index=index)
    if source is None:
        raise _unknown(doc_id)
    path = source.get("path")
    who = principal().name
    if uploads().holds(path):
        store.delete(doc_id, index)
        uploads().remove(path)
        how = "its uploaded file removed"
    else:
        # Recorded before the document goes, so that an indexer or watcher between the two
        # cannot bring the image back.
        decisions().decide("excluded", doc_id, path=path, by=who)
        try:
            store.delete(doc_id, index)
        except StoreError:
            # The image stays: so must the indexer's right to keep it (best effort; a
            # retried DELETE records the exclusion again).
            with suppress(StoreError):
                decisions().undo("excluded", doc_id)
            raise
        how = f"its file left in place and excluded ({path})"
    thumbnails().remove(doc_id)
    with suppress(StoreError):  # best effort: a decision left holds only for these bytes
        decisions().undo("metadata", doc_id)
    collection_changed(deleted=(doc_id,))
    current_app.logger.info("image %s deleted by %r, %s", doc_id, who, how)
    return "", 204


# -- what every write checks -------------------------------------------------------------------


def _form_metadata() -> dict:
    """The add's metadata fields: ``label`` (once), ``tags`` (repeated, each also split at
    ``;`` or ``,`` as the sidecar splits them) and ``extra.<column>`` (once each)."""
    form = request.form
    unknown = sorted(n for n in form if n not in ADD_FIELDS and not n.startswith("extra."))
    unknown += sorted(n for n in request.files if n != "image")
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise Problem(400, "unknown_parameter",
                      f"Unknown field(s): {shown}. Known: image, label, tags, extra.<column>.")
    fields: dict = {}
    for name in form:
        values = form.getlist(name)
        if name != "tags" and len(values) > 1:
            raise MetadataError(f"give {name} once, not {len(values)} times")
    if "label" in form:
        fields["label"] = form["label"]
    if "tags" in form:
        fields["tags"] = [t for value in form.getlist("tags") for t in split_tags(value)]
    extra = {name[len("extra."):]: form[name] for name in form if name.startswith("extra.")}
    if extra:
        fields["extra"] = extra
    return {k: v for k, v in checked(fields).items() if v is not None}


def _unknown(doc_id: str) -> Problem:
    return Problem(404, "not_found", f"No indexed image has the id {doc_id}.")


def _refuse_during_swap(what: str = "") -> None:
    """Conflict while a newer index of the alias is being built (or was left by a build
    that stopped): a write now would be missing from it once it replaces the current one."""
    newer = service().store.indices.swap_in_progress()
    if newer is None:
        return
    named = f" ({newer})" if is_admin() else ""
    raise Conflict(
        "index_swap_in_progress",
        f"A new index{named} is being built to replace the one searched now (a model switch "
        "or rebuild: `python -m indexer <dir> --new-index`), and a write now would be missing "
        f"from it once it takes over{'; this image ' + what + ' and was not kept' if what else ''}"
        ". Nothing was changed. Try again once the build has finished (/healthz names the "
        "index that serves). If no build is running, one stopped before its swap: run it "
        "again to finish it, or delete the index it left.")


def _write_index() -> str:
    """The concrete index behind the alias, which writes go to (refused during a swap)."""
    _refuse_during_swap()
    index = service().store.indices.current_index()
    if index is None:
        raise IndexMissing(service().store.alias)
    return index


def _add_target() -> tuple[Target, ImageModel]:
    """Where an add goes and the model that embeds it: the alias's index, which must be this
    server's model's (created by the first add when nothing is indexed yet)."""
    _refuse_during_swap()
    svc = service()
    model = svc.models.route().model
    # The index's own region mode, whatever this server's IMGSEARCH_REGIONS says.
    settings = svc.settings.with_(regions="off")
    try:
        return prepare(svc.store, settings, model, new_index=False), model
    except ModelVersionMismatch:
        raise Problem(
            503, "model_switching",
            "The index searched now was built by another model than the one this server has "
            "loaded (it follows the alias to the new model in the background); an image must "
            "be embedded by its index's model. Try again in a moment.",
            retry_after=2) from None


def register(app: Flask, settings: Settings) -> None:
    store = app.extensions["imgsearch"].store
    app.extensions["imgsearch.uploads"] = UploadStore(Path(settings.upload_dir))
    app.extensions["imgsearch.decisions"] = Decisions(store.es, settings.image_decisions_index)
    app.register_blueprint(bp)
