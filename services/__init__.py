"""The FastAPI service: caption requests and batch jobs over HTTP; see the REST service issue."""
