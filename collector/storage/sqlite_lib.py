"""sqlite-utils, loaded without pandas and numpy.

sqlite-utils imports pandas and numpy when they are installed (pandas comes with the test
tools), only to know their column types for tables it creates from Python values.  The
collector creates every table with SQL (migrations), so those types are never needed, and
importing pandas cost a fifth of every command's start-up.  Both are hidden while
sqlite-utils loads; code that needs numpy imports it itself later as usual.
"""

from __future__ import annotations

import sys

_HIDDEN = ("pandas", "numpy")

if "sqlite_utils" not in sys.modules:
    _absent = [name for name in _HIDDEN if name not in sys.modules]
    for _name in _absent:
        sys.modules[_name] = None  # type: ignore[assignment]  # makes "import pandas" fail inside sqlite-utils only
    try:
        import sqlite_utils
    finally:
        for _name in _absent:
            if sys.modules.get(_name, ...) is None:
                del sys.modules[_name]
else:
    import sqlite_utils

Database = sqlite_utils.Database

__all__ = ["Database", "sqlite_utils"]
