"""Workload identities: SPIFFE ids (`Identity`) and certificates (`WorkloadCertificate`, `MeshCA`).

The node-side certificate manager and CA client will live here too.
"""

from ambient_fast.identity.ca import MeshCA, WorkloadCertificate
from ambient_fast.identity.spiffe import Identity, InvalidIdentity

__all__ = ["Identity", "InvalidIdentity", "MeshCA", "WorkloadCertificate"]
