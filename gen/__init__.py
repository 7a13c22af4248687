"""dfa_engine package."""
