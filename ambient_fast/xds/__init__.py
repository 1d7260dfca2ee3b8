"""Config transport: Istio's delta xDS (ADS) over gRPC, sans-IO core first.

`ResourceStore` holds the resources and pushes changes; `DeltaStream` is one client stream's
delta-xDS state machine (subscriptions, nonces, ACK/NACK, coalescing); `XdsServer` serves it
with grpclib. On the node side, `DeltaSubscription` (sans-IO) and `XdsClient` (grpclib) subscribe,
apply and (N)ACK. Message types live in `ambient_fast.xds.proto`.
"""
