"""The node proxy's state: what the control plane (or the local file) says about the mesh.

`StateStore` holds `Workload`s, `Service`s and compiled policies, fed by the xDS client
(`ambient_fast.xds.client`) or `local.LocalConfigWatcher`, and answers the lookups the proxy
makes per connection (by IP, VIP, hostname, endpoints, applicable policies).
"""

from ambient_fast.state.local import LocalConfig, LocalConfigError, LocalConfigWatcher
from ambient_fast.state.model import GatewayAddress, NetworkAddress, Service, Workload
from ambient_fast.state.store import Applied, Endpoint, StateChange, StateStore

__all__ = [
    "Applied",
    "Endpoint",
    "GatewayAddress",
    "LocalConfig",
    "LocalConfigError",
    "LocalConfigWatcher",
    "NetworkAddress",
    "Service",
    "StateChange",
    "StateStore",
    "Workload",
]
