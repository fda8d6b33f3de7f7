"""The command line: Typer commands that parse, call the engine and render. The only Rich user."""
