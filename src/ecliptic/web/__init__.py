"""The web UI: sessions, their phases, logs and files, and the capacity calendar as a picture."""
