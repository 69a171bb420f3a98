"""allgui: desktop decision support for ALL blast detection (PySide6 + pyqtgraph)."""

__version__ = "0.1.0"

import trainer as _trainer  # noqa: F401 - sets the OpenMP wait policy before torch loads
