"""Model definitions. They know nothing about files, checkpoints layouts or the CLI."""
