"""``python -m onnxguard``: the command line, as the ``onnxguard`` program runs it."""

from onnxguard.cli import main

main()
