"""The node agent's side of capture: redirection rules for a pod's network namespace."""
