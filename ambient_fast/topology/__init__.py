"""Nodes and pods as network namespaces on one machine: the topology the netns tests use
today and `ambient-fast mesh` will use. See `builder.build`."""

from ambient_fast.topology.builder import NodeSpec, PodSpec, Topology, TopologyError, build

__all__ = ["NodeSpec", "PodSpec", "Topology", "TopologyError", "build"]
