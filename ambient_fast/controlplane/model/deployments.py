"""Deployment -> Pods, named the way Kubernetes names them: `<deploy>-<hash>-<suffix>`.

The hash stands for the pod template (as Kubernetes' pod-template-hash does), so an edit of
the template renames the pods, like a rollout; the suffix is derived from the deployment and
the replica index, so the names are the same on every load.
"""

from __future__ import annotations

import hashlib

import orjson

from ambient_fast.controlplane.model.core import Deployment, Pod
from ambient_fast.controlplane.model.meta import ObjectMeta, OwnerReference

# Kubernetes' rand.SafeEncodeString alphabet (no vowels, no look-alike digits).
_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
TEMPLATE_HASH_LABEL = "pod-template-hash"  # set by the ReplicaSet controller


def _encode(digest: bytes, length: int) -> str:
    number = int.from_bytes(digest, "big")
    chars = []
    for _ in range(length):
        number, rest = divmod(number, len(_ALPHABET))
        chars.append(_ALPHABET[rest])
    return "".join(chars)


def template_hash(deployment: Deployment) -> str:
    template = deployment.template
    canonical = orjson.dumps(
        {
            "labels": dict(template.labels),
            "annotations": dict(template.annotations),
            "spec": {
                "serviceAccount": template.spec.service_account,
                "nodeName": template.spec.node_name,
                "hostNetwork": template.spec.host_network,
                "ports": [[p.container_port, p.name, p.protocol] for p in template.spec.ports],
            },
        },
        option=orjson.OPT_SORT_KEYS,
    )
    return _encode(hashlib.blake2b(canonical, digest_size=8).digest(), 10)


def expand(deployment: Deployment) -> list[Pod]:
    """The deployment's `replicas` pods, with the template's labels plus pod-template-hash."""
    template = deployment.template
    pod_hash = template_hash(deployment)
    replica_set = f"{deployment.name}-{pod_hash}"
    labels = {**template.labels, TEMPLATE_HASH_LABEL: pod_hash}
    owner = (
        OwnerReference(kind="ReplicaSet", name=replica_set, api_version="apps/v1", controller=True),
    )
    pods: list[Pod] = []
    names: set[str] = set()
    for index in range(deployment.replicas):
        salt = 0
        while True:
            seed = f"{deployment.namespace}/{replica_set}/{index}/{salt}".encode()
            name = f"{replica_set}-{_encode(hashlib.blake2b(seed, digest_size=8).digest(), 5)}"
            if name not in names:
                break
            salt += 1
        names.add(name)
        meta = ObjectMeta(
            name=name,
            namespace=deployment.namespace,
            labels=labels,
            annotations=template.annotations,
            owner_references=owner,
            origin=deployment.meta.origin,
        )
        pods.append(
            Pod(
                meta=meta,
                service_account=template.spec.service_account,
                node_name=template.spec.node_name,
                host_network=template.spec.host_network,
                ports=template.spec.ports,
            )
        )
    return pods
