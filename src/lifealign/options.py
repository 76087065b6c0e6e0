"""The base of every option model: the run config's sections (lifealign.config) and each plugin's keys
of the `method` section (`Plugin.options`). Strict: an unknown key is an error, and so is a value of
another type (`true` is no int, `"3"` no number), except that a `Float` key takes what YAML reads."""
import contextlib
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict


def yaml_number(value):
    """YAML 1.1 reads 1e-4 (no dot) as a string and 2 as an int: as a float key's value, floats."""
    with contextlib.suppress(ValueError):  # a string that is no number stays a string (and an error)
        return float(value) if isinstance(value, int | str) and not isinstance(value, bool) else value
    return value


Float = Annotated[float, BeforeValidator(yaml_number)]


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
