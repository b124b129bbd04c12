"""dagrun: run a DAG of AI-agent sub-goals, with all state in plain files."""
__version__ = "0.1.0"
