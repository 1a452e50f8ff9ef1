"""Interface layer: everything a person sees — terminal output, views, the REPL front-end, signals, the click commands."""
