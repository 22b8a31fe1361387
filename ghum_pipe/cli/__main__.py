"""``python -m ghum_pipe.cli``: the ``ghum-pipe`` command."""

from ghum_pipe.cli import main

main()
