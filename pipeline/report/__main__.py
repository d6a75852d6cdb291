from pipeline.errors import run_main
from pipeline.report import main

run_main(main)
