"""Reply posters: how an answer reaches its thread. One per platform; the console one lives here."""
