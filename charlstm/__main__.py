from .interface.cli import main

main()
