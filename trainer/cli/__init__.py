"""The ``allgui-train`` command line: one module per subcommand (see :mod:`trainer.cli.main`)."""
