from meshkey.cli.main import main

main()
