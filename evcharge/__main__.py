from evcharge.cli import main

main()
