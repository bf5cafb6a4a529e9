"""The REST API (docs/API.md): conventions in errors, auth, pagination, ratelimit and
limits; job endpoints in serializers, views and urls."""
