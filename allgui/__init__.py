"""allgui: desktop decision support for ALL blast detection (PySide6 + pyqtgraph)."""

__version__ = "0.1.0"
