from enroll.cli import main

main()
