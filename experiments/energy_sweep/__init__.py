"""The system-level energy sweep: every bits scheme x allocation policy over
scenarios and device draws, without training (`python -m
experiments.energy_sweep`)."""
