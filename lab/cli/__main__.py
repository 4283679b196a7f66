"""`python -m lab.cli`: the halab command."""
from lab.cli import main

main()
