"""``python -m honed.cli``: the same CLI as the ``honed`` command, for subprocesses that
must run the interpreter they were started with."""

from honed.cli import main

main()
