"""Workload identities: SPIFFE ids (`Identity`) and certificates (`ca.WorkloadCertificate`,
`ca.MeshCA`: the control plane's CA, on `cryptography`).

Node side: `manager.CertificateManager` keeps one checked certificate per local identity
(`schedule.CertificateSchedule` decides when to fetch), from `ca_client.CaClient` (istiod's CA)
or `issuer.SelfSignedCa` (standalone).
"""

from ambient_fast.identity.spiffe import Identity, InvalidIdentity

__all__ = ["Identity", "InvalidIdentity"]
