"""Fakes of the outside world for fault tests and the soak: a Docker API on a unix socket, firewall
tools on a private PATH, a /proc with one dockerd and the sysctls. Stdlib only."""
