"""`python -m experiments.energy_sweep`: see main.py next to this file."""

from experiments.energy_sweep import main

main.run()
