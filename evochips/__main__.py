from evochips.cli import main

main()
