"""Deploying a cluster on a lab's machines: kubespray, or halab's own control plane (static)."""
