"""The base of every config section: unknown keys are errors, values are frozen, field docstrings are kept."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
