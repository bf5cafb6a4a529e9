"""Keyset (cursor) pagination: ``{"results": [...], "next": "<url>" | null}``.

    paginator = KeysetPagination(ordering=("-created_at", "-id"))   # newest first
    paginator = KeysetPagination(ordering=("batch_index",))          # index order
    return paginator.paginated_response(request, queryset, SomeSerializer)

The cursor is an opaque token holding the ordering values of the last row served;
the next page is the rows strictly after it in the ordering, so rows inserted
meanwhile never shift a page (no duplicates, no skips) and every page costs one
indexed query however deep it is. The ordering's fields must be non-null and
together unique (end with ``id`` when the leading field can repeat: jobs created in
one statement, like a batch's children, share ``created_at``). ``?limit=`` picks the page size (1..200,
default 50); a malformed cursor or limit is a 400 ``invalid_request``.
"""

import base64
import binascii
import json
from datetime import datetime
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Model, Q, QuerySet
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param

from .errors import invalid_request

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
CURSOR_PARAM = "cursor"
LIMIT_PARAM = "limit"

PARAMETERS = [
    OpenApiParameter(CURSOR_PARAM, str, description="the `next` link's cursor; omit for the first page"),
    OpenApiParameter(LIMIT_PARAM, int, description=f"page size, 1..{MAX_LIMIT} (default {DEFAULT_LIMIT})"),
]


class KeysetPagination:
    def __init__(self, ordering: Sequence[str]) -> None:
        self.ordering = tuple(ordering)
        self.fields = [(name.lstrip("-"), name.startswith("-")) for name in self.ordering]

    # --- request → page ---------------------------------------------------------------

    def limit(self, request: Request) -> int:
        raw = request.query_params.get(LIMIT_PARAM)
        if raw is None:
            return DEFAULT_LIMIT
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
            raise invalid_request(f"limit must be an integer between 1 and {MAX_LIMIT}")
        return int(raw)

    def page(self, request: Request, queryset: QuerySet[Any]) -> tuple[list[Any], str | None]:
        """One query: the rows of this page and the next link (None on the last page)."""
        limit = self.limit(request)
        queryset = queryset.order_by(*self.ordering)
        token = request.query_params.get(CURSOR_PARAM)
        if token is not None:
            queryset = queryset.filter(self._after(queryset.model, self._decode(queryset.model, token)))
        rows = list(queryset[: limit + 1])
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        next_url = replace_query_param(
            request.build_absolute_uri(), CURSOR_PARAM, self._encode(rows[-1])
        )
        return rows, next_url

    def paginated_response(
        self, request: Request, queryset: QuerySet[Any], serializer_class: type[serializers.BaseSerializer]
    ) -> Response:
        rows, next_url = self.page(request, queryset)
        return Response({"results": serializer_class(rows, many=True).data, "next": next_url})

    # --- cursor ---------------------------------------------------------------------------

    def _after(self, model: type[Model], values: list[Any]) -> Q:
        """Rows strictly after ``values``: (a > x) or (a = x and b > y) or ..."""
        condition = Q(pk__in=[])
        for i, (name, descending) in enumerate(self.fields):
            equal = {self.fields[j][0]: values[j] for j in range(i)}
            lookup = f"{name}__lt" if descending else f"{name}__gt"
            condition |= Q(**equal, **{lookup: values[i]})
        return condition

    def _encode(self, row: Any) -> str:
        values = [_plain(getattr(row, name)) for name, _ in self.fields]
        return base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode()).decode().rstrip("=")

    def _decode(self, model: type[Model], token: str) -> list[Any]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            values = json.loads(raw)
            if not isinstance(values, list) or len(values) != len(self.fields):
                raise ValueError("wrong length")
            decoded = [model._meta.get_field(name).to_python(v) for (name, _), v in zip(self.fields, values)]
            if any(isinstance(v, datetime) and v.tzinfo is None for v in decoded):
                raise ValueError("naive time")
            return decoded
        except (ValueError, TypeError, binascii.Error, DjangoValidationError):
            raise invalid_request("malformed cursor; use the `next` link as given") from None


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str)) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def paginated_serializer(item: type[serializers.BaseSerializer], name: str) -> type[serializers.Serializer]:
    """The schema of a page of ``item``, for extend_schema(responses=...)."""
    return type(
        name,
        (serializers.Serializer,),
        {
            "results": item(many=True),
            "next": serializers.URLField(allow_null=True, help_text="the next page, or null on the last"),
        },
    )
