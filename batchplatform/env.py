"""Typed readers for environment variables that fail loudly on bad values.

Secrets may also come from a file: ``NAME_FILE=/run/secrets/x`` is read when
``NAME`` itself is unset (Docker and Kubernetes secrets).
"""

import os

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def envstr(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    if value is None and os.environ.get(f"{name}_FILE"):
        with open(os.environ[f"{name}_FILE"], encoding="utf-8") as fh:
            value = fh.read().strip()
    return default if value is None else value


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be 0 or 1, got {value!r}")


def envint(name: str, default: int, minimum: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    try:
        result = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and result < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {result}")
    return result


def envseconds(name: str, default: float) -> float:
    """A duration in seconds; decimals allowed (tests use fractions of a second)."""
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return float(default)
    try:
        result = float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number of seconds, got {value!r}") from None
    if result <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, got {value!r}")
    return result


def envlist(name: str, default: str) -> list[str]:
    value = os.environ.get(name, default)
    return [part.strip() for part in value.split(",") if part.strip()]
