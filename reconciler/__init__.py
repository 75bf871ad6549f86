"""modelplane reconciler: manifests → desired state → plan → apply."""
