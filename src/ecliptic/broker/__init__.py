"""The IVOA ExecutionBroker: offers, booking and the session lifecycle."""
