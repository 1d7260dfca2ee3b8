"""ambient-fast: the Istio ambient mesh data plane (ztunnel, waypoint, CNI) with native hot paths.

Python on uvloop decides; `_native` (Rust: rustls, HTTP/2 CONNECT) and `_core` (Cython: splice)
move the bytes. Start at `ambient_fast.hbone` for the tunnel and `ambient_fast.splice` for relays.
"""

__version__ = "0.1.0"
