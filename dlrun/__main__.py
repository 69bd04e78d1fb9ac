from dlrun.command import main

main()
