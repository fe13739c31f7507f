"""`python -m experiments.energy_sweep`: see `experiments/energy_sweep/main.py`."""
from experiments.energy_sweep import main

main.run()
