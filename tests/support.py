"""Helpers shared by the web app and reliability tests (fixtures stay in the conftests)."""

from __future__ import annotations

from flask.testing import FlaskClient

from webapp import create_app


class CheckedClient(FlaskClient):
    """A test client that fails any response showing a stack trace."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        assert b"Traceback" not in response.get_data(), response.get_data(as_text=True)
        return response


def build_app(settings, embedder, store=None, **options):
    """An app in testing mode whose clients check every response."""
    app = create_app(settings, embedder=embedder, store=store, **options)
    app.config.update(TESTING=True)
    app.test_client_class = CheckedClient
    return app
