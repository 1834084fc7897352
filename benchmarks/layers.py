"""The layer benchmark grid: fusedrnn vs torch.nn. Same as `python -m fusedrnn bench`.

    python benchmarks/layers.py --grid all              # this machine's grid, all shapes
    python benchmarks/layers.py --grid fastrnns,latency --dtypes float32 --cells GRU

The code lives in the package (fusedrnn/bench.py) so an installed wheel can run it;
see its docstring for the FLOP count, the peak and the outputs.
"""
import sys

from fusedrnn.bench import main

if __name__ == "__main__":
    sys.exit(main())
