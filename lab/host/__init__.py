"""The host halab runs on: its facts, the doctor's rules, the Kubernetes binaries."""
