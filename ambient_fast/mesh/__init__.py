"""A whole ambient mesh on one machine: nodes and pods as network namespaces (`topology`), the
control plane, and per node a CNI agent and a ztunnel, as processes (`cluster.run_cluster`).
The netns tests and `ambient-fast perf cni` run on it; `ambient-fast mesh` will."""
