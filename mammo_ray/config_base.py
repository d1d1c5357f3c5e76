"""The base of every config section, in a module of its own so stage modules can define their
sections without importing the whole study config."""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
