"""Generation layer: sampling rules, the Generator and the headless REPL session."""
