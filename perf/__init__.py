"""Benchmarks of ambient-fast against anchors measured in the same run (source checkout only).

`perf.l4` runs the L4 scenarios (direct, HAProxy, splice relay, stunnel, HBONE) and prints
ratios; `perf.cpu_profile` measures how much of an HBONE proxy's CPU goes to the interpreter.
"""
