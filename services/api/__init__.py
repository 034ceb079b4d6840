"""The REST API: caption requests and batch jobs over HTTP (``dataengine serve``)."""

from services.api.app import create_app

__all__ = ["create_app"]
