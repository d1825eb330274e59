"""mvm ingest package."""
