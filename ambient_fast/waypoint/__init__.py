"""The waypoint: the L7 proxy of ambient mode; today only its configuration.

`load_waypoint_config` turns the `WaypointConfig` the control plane serves into a
`WaypointView`: the user's documents parsed by the control plane's own model parser, the
AuthorizationPolicies compiled into the one policy engine, the routes of each bound service.
"""

from ambient_fast.waypoint.config import WaypointView, load_waypoint_config

__all__ = ["WaypointView", "load_waypoint_config"]
