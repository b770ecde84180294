"""Deployment templates shipped with edgemeter: the Mosquitto configuration and ACL, the agent's systemd unit."""
