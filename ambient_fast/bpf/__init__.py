"""eBPF from Python without libbpf or a compiler: the bpf(2) calls (`syscall`: maps,
programs with their verifier log, tcx attachments, queries by id) and a typed instruction
assembler (`insn`)."""
