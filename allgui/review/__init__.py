"""Review mode: the review model (Qt-free, kept in the case file), its bar, its controller and the case files."""
