"""The ``llmsim`` command line: it sits above the three packages (``hardware_profiles``,
``simulator``, ``validate``) and may import each; none of them imports it.

    cli.py               the typer app, its shared options, and ``main()`` (errors -> one line, exit 2)
    common.py            what every command shares: JSON output, the console, inputs and flags
    profile_command.py   ``llmsim profile`` (also ``python -m llmsim.profile_command``)
    validate_command.py  ``llmsim validate``
    sweep_command.py     ``llmsim sweep`` (the cells of ``simulator.sweeps`` on Dask)
"""
