"""Chat adapters (Discord, Slack): they turn messages into jobs on the queue. They arrive with the adapter issues."""
