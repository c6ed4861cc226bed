"""Operating a process: Prometheus metrics, /metrics and /healthz, `xwinbot status`, settings checked at start."""
