"""Config files: each has get_config() -> ml_collections.ConfigDict; shared pieces are the _*.py modules."""
