"""`python -m benchmarks.peers` runs benchmarks/peers.py (the package
benchmarks/peers/ shadows the module of the same name for `-m`)."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "peers.py"), run_name="__main__")
