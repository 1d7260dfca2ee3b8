"""Finding a pod's namespace by IP: the right one, none, or a refusal when several match."""

from __future__ import annotations

import pytest

from ambient_fast.cni.netns_finder import AmbiguousNetns, NetnsFinder
from ambient_fast.topology import NodeSpec, PodSpec, build

NODE = [NodeSpec("node-a", "10.244.1.0/24")]
PODS = [PodSpec("one", "node-a", "10.244.1.5"), PodSpec("two", "node-a", "10.244.1.6")]


def test_each_pod_is_found_by_its_ip_within_its_topology() -> None:
    with build(NODE, PODS) as topology:
        finder = NetnsFinder(topology.pod_netns_prefix)
        for pod in topology.pods.values():
            assert finder.find(pod.ip) == f"/run/netns/{pod.netns}"
        assert finder.find("10.244.1.99") is None


def test_an_address_in_two_namespaces_is_refused_unless_the_prefix_tells_them_apart() -> None:
    with build(NODE, PODS) as first, build(NODE, PODS) as second:
        with pytest.raises(AmbiguousNetns, match=r"10\.244\.1\.5 is local to several namespaces"):
            NetnsFinder().find("10.244.1.5")
        found = NetnsFinder(second.pod_netns_prefix).find("10.244.1.5")
        assert found == f"/run/netns/{second.pods['one'].netns}"
        assert first.pods["one"].netns not in found
