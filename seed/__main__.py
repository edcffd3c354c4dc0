from seed.cli import main

main()
