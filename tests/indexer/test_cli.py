"""The one handler of every verb: each kind of error becomes one line and its exit status."""

from __future__ import annotations

import pytest

from imgsearch.explain import ExplainUnavailable
from imgsearch.images import ImageError
from imgsearch.settings import Settings
from imgsearch.store import IndexMissing, StoreUnavailable
from imgsearch.weights import WeightsError
from indexer import cli


def raising(exc: BaseException):
    def verb(settings: Settings) -> int:
        raise exc

    return verb


@pytest.mark.parametrize("exc,status,said", [
    (ImageError("corrupt", "the file is not an image"), cli.EXIT_USAGE,
     "error: the file is not an image"),
    (cli.UsageError("/nowhere is not a folder"), cli.EXIT_USAGE, "error: /nowhere is not a folder"),
    (WeightsError("the weights' digest is wrong"), cli.EXIT_ABORTED,
     "error: the weights' digest is wrong"),
    (ExplainUnavailable("file_unavailable", "the file moved"), cli.EXIT_ABORTED,
     "error: the file moved"),
    (IndexMissing("no such index"), cli.EXIT_ABORTED,
     "error: no images are indexed under 'cli-test' yet"),
    (KeyboardInterrupt(), cli.EXIT_ABORTED, "interrupted before it began"),
])
def test_each_kind_of_error_has_its_status(exc, status, said, capsys):
    settings = Settings(es_index="cli-test")
    code = cli.run(raising(exc), settings=lambda: settings,
                   interrupted="interrupted before it began")
    assert code == status
    assert said in capsys.readouterr().err


def test_an_unreachable_store_names_the_address_and_the_fix(capsys):
    exc = StoreUnavailable("Elasticsearch is not reachable")
    exc.__cause__ = ConnectionRefusedError("refused")
    code = cli.run(raising(exc), settings=lambda: Settings(es_url="http://127.0.0.1:9"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_ABORTED
    assert "error: Elasticsearch at http://127.0.0.1:9 is not reachable (refused)" in err
    assert "make es-up" in err


def test_a_bad_setting_is_bad_input_and_the_verb_never_runs(monkeypatch, capsys):
    monkeypatch.setenv("IMGSEARCH_BATCH_SIZE", "many")
    ran = []
    assert cli.run(lambda settings: ran.append(settings) or 0) == cli.EXIT_USAGE
    assert "IMGSEARCH_BATCH_SIZE" in capsys.readouterr().err and not ran


def test_an_unexpected_error_is_not_swallowed():
    with pytest.raises(ZeroDivisionError):
        cli.run(raising(ZeroDivisionError()), settings=Settings)
