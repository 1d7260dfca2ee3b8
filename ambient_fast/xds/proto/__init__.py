"""Protobuf messages of the Istio control-plane contract, generated from the .proto files here.

`workload_pb2` (istio.workload: Address, Workload, Service), `authorization_pb2`
(istio.security.Authorization), `citadel_pb2`/`citadel_grpc` (the CA), `zds_pb2` (CNI handoff),
`discovery_pb2`/`discovery_grpc` (delta ADS, and the NACK `Status`), `core_pb2` (Node), and
`waypoint_pb2` (ambient.waypoint.v1.WaypointConfig: our own waypoint L7 configuration).
Regenerate with `python -m ambient_fast.xds.proto.generate`; never edit the generated modules.
"""
