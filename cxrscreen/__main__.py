from cxrscreen.cli.app import main

main()
