"""What every config section shares: strictness (a typo is an error, not ignored) and the count bound."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

MAX_COUNT = 2**31 - 1  # a count limit's largest value: what a 32-bit database column holds


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
