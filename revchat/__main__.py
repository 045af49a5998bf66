from revchat.cli import main

main()
