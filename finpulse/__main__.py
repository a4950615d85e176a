from finpulse.cli import run_main

run_main()
