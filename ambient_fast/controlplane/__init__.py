"""The control plane: what istiod does for an ambient mesh, for one machine and for tests.

`model` loads the Kubernetes / Istio / Gateway API YAML users write into an immutable,
indexed `Mesh`; the translation turns that into Istio's workload API, served over delta xDS.
"""
