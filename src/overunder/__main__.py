from overunder.cli.main import main

main()
