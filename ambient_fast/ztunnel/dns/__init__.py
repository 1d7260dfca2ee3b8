"""ztunnel's DNS proxy (localhost:15053): a captured pod's queries are answered from the mesh's
services or forwarded to the upstream resolvers of resolv.conf.

`message` reads and writes DNS messages (sans-IO); `resolver.DnsResolver` decides what the mesh
answers (sans-IO: records, or `Forward`); `forwarder.Forwarder` asks upstream (UDP, then TCP
when truncated); `server.DnsHandler` answers one query and `server.DnsServer` serves UDP and TCP
for one proxy (dedicated mode: the node's; in-pod mode: one per pod, in its network namespace).
"""
