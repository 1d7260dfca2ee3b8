"""eBPF capture (`--redirect=ebpf`): istio-cni's in-pod capture without iptables. An egress
program and an sk_lookup program in the pod's namespace hand its TCP to the node proxy's
in-pod listeners (`programs`); `EbpfCapture` installs, checks and removes them per pod; the
node proxy registers its listeners in the pod's map (`listeners`)."""

from ambient_fast.cni.ebpf.capture import EbpfCapture, EbpfUnavailable

__all__ = ["EbpfCapture", "EbpfUnavailable"]
