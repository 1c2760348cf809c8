"""The command line: main (the parser, built from each command module's `register`, and the dispatch), and
one module per command: ask, tool, models, doctor. Heavy imports happen inside the handlers."""
