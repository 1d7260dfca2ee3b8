"""Mesh model -> Istio's workload API, with istiod's semantics (reference 02, 03).

`translate(mesh)` gives a `Translation`: Address resources (Workload, Service) by name,
Authorization resources for node proxies, and every policy in engine form (`policy.Policy`)
for waypoints and the offline tools. `Translation.publish(store)` feeds the xDS server;
`LiveTranslation` keeps a store in step with each new Mesh, translating only what changed.
"""

from ambient_fast.controlplane.translate.incremental import LiveTranslation, Published
from ambient_fast.controlplane.translate.translate import (
    TranslateOptions,
    Translation,
    translate,
)

__all__ = ["LiveTranslation", "Published", "TranslateOptions", "Translation", "translate"]
