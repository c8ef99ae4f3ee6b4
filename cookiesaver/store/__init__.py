"""Where documents end up: the MongoDB store and the embedded server."""
