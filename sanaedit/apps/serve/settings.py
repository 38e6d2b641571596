"""A job's settings, one definition for both ways a client sends them: query parameters (`?steps=4`) and the text
fields of a multipart form (`curl -F image=@a.jpg -F steps=4`, an HTML form). The bounds live here once; FastAPI
documents the query form in /docs from the same model.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

MAX_SEED = 2**63 - 1


def settings_model(defaults: dict[str, Any]) -> type[BaseModel]:
    """The settings a job accepts, with the server's defaults (`steps`, `guidance`, `seed`)."""
    return create_model(
        "JobSettings",
        __config__=ConfigDict(allow_inf_nan=False),
        steps=(int, Field(defaults["steps"], ge=1, le=50)),
        guidance=(float, Field(defaults["guidance"], ge=1.0, le=20.0)),
        seed=(int, Field(defaults["seed"], ge=0, le=MAX_SEED)),
        name=(str | None, Field(None, max_length=200, description="the photo's file name (default: the form's)")),
        prompt=(str | None, Field(None, max_length=2000)),
        strength=(float, Field(1.0, gt=0.0, le=1.0, description="how far from the photo: the last part of the steps")),
        control=(
            Literal["none", "edges", "upload"],
            Field(
                "none",
                description="steer through the model's ControlNet: none, the photo's edges, or the "
                "multipart upload's `control_image` field",
            ),
        ),  # fmt: skip
    )


def merge_form_fields(query: BaseModel, fields: dict[str, str]) -> BaseModel:
    """The query's settings, with those it did not give taken from the form's text fields (422, naming the field,
    as FastAPI answers a bad query parameter). `fields` holds only the model's own names (uploads.py keeps no
    others: like unknown query parameters, unknown form fields are ignored)."""
    model = type(query)
    given = query.model_dump(exclude_unset=True)
    try:
        return model.model_validate({**fields, **given})
    except ValidationError as err:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in err.errors()]) from None
