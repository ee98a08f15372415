"""`rlft.model`: alias of `rlft.models`, for the TRL quickstart's ``from trl.model import ...``."""

from .models import *  # noqa: F401,F403
from .models import __all__  # noqa: F401
