from revchat.cli.main import main

main()
