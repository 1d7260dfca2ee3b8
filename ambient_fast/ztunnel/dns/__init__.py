"""ztunnel's DNS proxy (localhost:15053): a captured pod's queries are answered from the mesh's
services or forwarded upstream.

`message` reads and writes DNS messages (sans-IO); `resolver.DnsResolver` decides what the mesh
answers (sans-IO: records, or `Forward`).
"""
