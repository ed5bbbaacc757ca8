"""What every verb of ``python -m indexer`` shares: exit codes, logging, and one handler that
turns the product's errors into a line on stderr and an exit status (imgsearch/errors.py).

Exit status: 0 done; 1 aborted (a part it needs is unavailable, a conflict, or interrupted);
2 bad input (arguments, settings, files, training data); 3 done, but some images failed (each
listed).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

from imgsearch.errors import BadInput, Conflict, Unavailable
from imgsearch.settings import Settings
from imgsearch.store import IndexMissing, StoreUnavailable

EXIT_OK, EXIT_ABORTED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


class UsageError(BadInput):
    """A command line that cannot run as given (a folder that is not one, a bad option)."""


class _WithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def set_up_logging(level: int = logging.INFO) -> None:
    """``level`` for the product's messages; the Elasticsearch client kept quiet: one line per
    HTTP request would drown the progress bar, and it logs each retry with a 30-line
    traceback, so only its warnings, as one line each (the final error says it all)."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    transport = logging.getLogger("elastic_transport")
    transport.setLevel(logging.WARNING)
    for name in ("elastic_transport.transport", "elastic_transport.node_pool"):
        logging.getLogger(name).addFilter(_WithoutTraceback())


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: each verb says what stopping means for it (the indexer
    prints its summary and exits 1, the watcher abandons its batch and exits 0)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def stop_on_sigterm() -> None:
    """From now on SIGTERM raises :class:`Terminated` in the main thread, as Ctrl-C raises
    KeyboardInterrupt (``docker stop``, systemd and kill send SIGTERM)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def add_model_options(p) -> None:
    """The options of every verb that embeds photos (index, watch): which model, which
    regions, how large a batch, how many decode threads; :func:`model_overrides` reads them."""
    from imgsearch.regions import REGION_MODES

    p.add_argument("--model", help="a fine-tuned model: its directory or its model version in "
                   "the model store (default: IMGSEARCH_MODEL, else the base model)")
    p.add_argument("--regions", choices=sorted(REGION_MODES),
                   help="give a new index region vectors, for searching with part of a photo "
                   "(default: IMGSEARCH_REGIONS, else none); an index that has them keeps "
                   "getting them")
    p.add_argument("--batch-size", type=int, help="images per inference batch")
    p.add_argument("--workers", type=int, help="decode threads (default: cores + 1, max 4)")


def model_overrides(args) -> dict:
    """The settings an indexing verb's options override: ``--batch-size``, ``--model``,
    ``--regions``."""
    overrides: dict = {"batch_size": args.batch_size} if args.batch_size else {}
    if args.model:
        overrides["model"] = args.model
    if args.regions:
        overrides["regions"] = args.regions
    return overrides


def error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def run(
    verb: Callable[[Settings], int],
    *,
    settings: Callable[[], Settings] = Settings.from_env,
    interrupted: str = "interrupted; nothing was written",
) -> int:
    """Read the settings, run ``verb`` with them and return its exit status, or the status of
    the error that stopped it, said in one line. ``interrupted`` is what Ctrl-C before the
    verb's own handling means."""
    try:
        config = settings()
    except ValueError as exc:  # a setting that does not parse or fails its check
        error(exc)
        return EXIT_USAGE
    try:
        return verb(config)
    except BadInput as exc:
        error(exc)
        return EXIT_USAGE
    except StoreUnavailable as exc:
        error(f"Elasticsearch at {config.es_url} is not reachable ({exc.__cause__}). "
              "Start it with `make es-up`.")
        return EXIT_ABORTED
    except IndexMissing:
        error(f"no images are indexed under {config.es_index!r} yet. Index a folder with "
              "`python -m indexer <dir>` first.")
        return EXIT_ABORTED
    except (Unavailable, Conflict) as exc:
        error(exc)
        return EXIT_ABORTED
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_ABORTED
