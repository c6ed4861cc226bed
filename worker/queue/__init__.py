"""The contract adapters and workers share, torch-free: the job schema, the job queue, Redis connection and keys,
the reply index, queue positions, lost jobs and the RQ job threads."""
