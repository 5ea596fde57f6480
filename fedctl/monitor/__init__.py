"""Monitoring: probes of hosts, metrics/log readers, the watch model and its snapshot."""
