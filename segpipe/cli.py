"""How stage scripts report a user error: one clear message on stderr and exit code 2, no traceback."""
from __future__ import annotations

import sys
from typing import Callable


def run_stage(name: str, main: Callable[[], int | None]) -> None:
    """Calls `main()` and exits with the code it returns (None = 0); a ValueError (bad data or params)
    becomes `<name>: error: <message>` and exit 2."""
    try:
        code = main()
    except ValueError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
