"""The benchmarks behind ``python -m simulations.bench NAME``, one module each."""
