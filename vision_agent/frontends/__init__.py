"""Front ends over the core: the terminal (what reaches it), logging, the one-shot console run, and the CLI."""
