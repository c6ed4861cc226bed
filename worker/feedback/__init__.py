"""People's ratings of answers (👍/👎), kept in Redis: ``worker.feedback.store``."""
